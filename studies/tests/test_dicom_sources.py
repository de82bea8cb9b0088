"""Where bulk imports find files (dicomcore.sources) and how archives are streamed out
(dicomcore.zipstream): pure modules, real files on disk, no database.

Zip archives are built with `zipfile`; the few archives zipfile cannot write (a member flagged
as encrypted, a member whose declared size lies) are made by patching the bytes zipfile wrote,
so every archive here is a real file that any zip reader would see the same way.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import multiprocessing
import os
import signal
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomcore import sources, zipstream

from .conftest import CT_SMALL, PYDICOM_TEST_FILES, dicom_bytes

GENEROUS = sources.ZipLimits()
BIG = 1024**3
DICOMDIR = Path(get_testdata_file("DICOMDIR"))


def stored_sha256(data: bytes) -> str:
    """The digest the catalogue keeps: the file as stored, with its 128-byte preamble zeroed."""
    return hashlib.sha256(bytes(128) + data[128:]).hexdigest()


def make_zip(path: Path, members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def zeros_member(path: Path, name: str, size: int) -> Path:
    """A one-member zip of `size` zero bytes, deflated (about 1000:1), written without holding it in memory."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=size > 2**31) as target:
            block = bytes(1024 * 1024)
            left = size
            while left > 0:
                target.write(block[: min(left, len(block))])
                left -= len(block)
    return path


def patch_single_member(path: Path, *, flags: int | None = None, file_size: int | None = None) -> None:
    """Rewrite the general-purpose flags or the declared uncompressed size of a one-member zip,
    in both its local header and its central directory entry (what zipfile cannot write)."""
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.rindex(b"PK\x01\x02")
    if flags is not None:
        struct.pack_into("<H", data, local + 6, flags)
        struct.pack_into("<H", data, central + 8, flags)
    if file_size is not None:
        struct.pack_into("<I", data, local + 22, file_size)
        struct.pack_into("<I", data, central + 24, file_size)
    path.write_bytes(bytes(data))


def labels(items) -> list[str]:
    return [item.label for item in items]


def skipped(items) -> dict[str, str]:
    return {item.label: item.reason for item in items if isinstance(item, sources.Skipped)}


def refused(items) -> dict[str, str]:
    return {item.label: item.reason for item in items if isinstance(item, sources.Refused)}


def found(items) -> list[sources.Source]:
    return [item for item in items if isinstance(item, sources.Source)]


# --- walk: folders, files, DICOMDIR -----------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    """root/{b.dcm, README.txt, empty.dcm, sub/{a.dcm, deeper/c.dcm}, picture.png}"""
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b.dcm").write_bytes(dicom_bytes())
    (root / "README.txt").write_text("not an image\n")
    (root / "empty.dcm").write_bytes(b"")
    (root / "sub" / "a.dcm").write_bytes(dicom_bytes())
    (root / "sub" / "deeper" / "c.dcm").write_bytes(dicom_bytes())
    from PIL import Image

    Image.new("L", (4, 4)).save(root / "picture.png")
    return root


def test_walk_descends_folders_recursively_in_name_order(tree):
    items = list(sources.walk([tree]))
    assert labels(items) == [
        str(tree / "README.txt"),
        str(tree / "b.dcm"),
        str(tree / "empty.dcm"),
        str(tree / "picture.png"),
        str(tree / "sub" / "a.dcm"),
        str(tree / "sub" / "deeper" / "c.dcm"),
    ]
    assert [Path(s.path).name for s in found(items)] == ["b.dcm", "a.dcm", "c.dcm"]
    assert all(s.size == Path(s.path).stat().st_size and s.archive is None for s in found(items))


def test_walk_skips_what_is_not_dicom_with_a_reason(tree):
    reasons = skipped(sources.walk([tree]))
    assert reasons == {
        str(tree / "README.txt"): "not a DICOM Part-10 file (no DICM prefix)",
        str(tree / "empty.dcm"): "empty file",
        str(tree / "picture.png"): "not a DICOM Part-10 file (no DICM prefix)",
    }


def test_walk_accepts_single_files_and_reports_missing_paths(tmp_path):
    dcm = tmp_path / "one.dcm"
    dcm.write_bytes(dicom_bytes())
    items = list(sources.walk([dcm, tmp_path / "nope"]))
    assert isinstance(items[0], sources.Source) and items[0].path == dcm
    assert items[1] == sources.Skipped(str(tmp_path / "nope"), "no such file or folder")


def test_walk_skips_special_files_without_opening_them(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)  # opening it for reading would block forever
    assert list(sources.walk([tmp_path])) == [sources.Skipped(str(fifo), "not a regular file")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_walk_reports_unreadable_files(tmp_path):
    locked = tmp_path / "locked.dcm"
    locked.write_bytes(dicom_bytes())
    locked.chmod(0)
    try:
        (item,) = sources.walk([tmp_path])
    finally:
        locked.chmod(0o600)
    assert isinstance(item, sources.Skipped) and item.reason.startswith("cannot be read")


@pytest.mark.parametrize(
    ("head", "name", "reason"),
    [
        (b"", "x.dcm", "empty file"),
        (b"hello", "x.dcm", "not a DICOM Part-10 file (no DICM prefix)"),
        (bytes(128) + b"DICX", "x.dcm", "not a DICOM Part-10 file (no DICM prefix)"),
        (bytes(128) + b"DICM", "dicomdir", "DICOMDIR: the media index, not an image; the files it lists are imported themselves"),
        (bytes(128) + b"DICM", "x.dcm", ""),
        (bytes(128) + b"DICM", "no-extension", ""),
    ],
)
def test_classify_by_the_first_132_bytes_and_the_name(head, name, reason):
    assert sources.classify(head, name) == reason


def test_dicomdir_given_by_name_yields_the_files_it_lists_and_skips_itself():
    index = pydicom.dcmread(DICOMDIR)
    listed = {
        str(DICOMDIR.parent.joinpath(*record.ReferencedFileID).resolve())
        for record in index.DirectoryRecordSequence
        if "ReferencedFileID" in record
    }
    items = list(sources.walk([DICOMDIR]))
    assert len(listed) == 31
    assert {s.label for s in found(items)} == listed
    assert skipped(items) == {
        str(DICOMDIR): "DICOMDIR: the media index, not an image; the files it lists are imported themselves"
    }


def test_dicomdir_inside_a_walked_folder_is_skipped_not_followed():
    items = list(sources.walk([DICOMDIR.parent]))
    assert skipped(items)[str(DICOMDIR)].startswith("DICOMDIR: the media index")
    # The listed files are found by the walk itself, once each.
    assert len(labels(items)) == len(set(labels(items)))


def test_dicomdir_entries_pointing_outside_its_folder_or_missing_are_skipped(tmp_path):
    index = pydicom.dcmread(DICOMDIR)
    records = [r for r in index.DirectoryRecordSequence if "ReferencedFileID" in r]
    records[0].ReferencedFileID = ["..", "..", "etc", "passwd"]
    records[1].ReferencedFileID = "/etc/passwd"
    media = tmp_path / "cdrom"
    media.mkdir()
    index.save_as(media / "DICOMDIR")  # copied without the image files it lists

    items = list(sources.walk([media / "DICOMDIR"]))
    reasons = skipped(items)
    assert found(items) == []
    assert sorted(reasons.values()).count("DICOMDIR entry points outside its folder") == 2
    assert sorted(reasons.values()).count("listed in DICOMDIR but missing") == 29
    assert "/etc/passwd" in reasons and reasons["/etc/passwd"] == "DICOMDIR entry points outside its folder"


def test_unreadable_dicomdir_given_by_name_is_reported_not_fatal(tmp_path):
    broken = tmp_path / "DICOMDIR"
    broken.write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x10")  # a 1-byte UL value
    items = list(sources.walk([broken]))
    assert items[0].label == str(broken) and items[0].reason.startswith("DICOMDIR cannot be read")
    assert all(isinstance(item, sources.Skipped) for item in items)


# --- zip archives: read in place, guarded before anything is decompressed ---------------------


def test_zip_members_are_sources_read_in_place(tmp_path):
    a, b = dicom_bytes(), dicom_bytes()
    archive = make_zip(tmp_path / "export.zip", {"x/a.dcm": a, "b.dcm": b, "x/": b""})
    before = sorted(tmp_path.rglob("*"))
    items = list(sources.walk([tmp_path]))
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted next to the archive
    assert [(s.label, s.member, s.archive, s.size) for s in found(items)] == [
        (f"{archive}/x/a.dcm", "x/a.dcm", archive, len(a)),
        (f"{archive}/b.dcm", "b.dcm", archive, len(b)),
    ]
    with found(items)[0].open() as stream:
        assert stream.read() == a


def test_an_empty_zip_has_no_members(tmp_path):
    archive = make_zip(tmp_path / "empty.zip", {})
    assert archive.read_bytes()[:4] == sources.EMPTY_ZIP_MAGIC
    assert list(sources.walk([archive])) == []


@pytest.mark.parametrize("name", ["../evil.dcm", "a/../../evil.dcm", "/abs.dcm", "\\abs.dcm", "C:\\x.dcm", "C:x.dcm", "sub\\..\\..\\x.dcm"])
def test_members_with_unsafe_paths_are_refused(tmp_path, name):
    archive = make_zip(tmp_path / "a.zip", {name: dicom_bytes(), "ok.dcm": dicom_bytes()})
    items = list(sources.walk([archive]))
    assert skipped(items) == {}
    assert refused(items) == {f"{archive}/{name}": "unsafe path in archive (absolute or '..')"}
    assert [s.member for s in found(items)] == ["ok.dcm"]


def test_nested_archives_and_dicomdir_members_are_skipped(tmp_path):
    inner = make_zip(tmp_path / "inner.zip", {"a.dcm": dicom_bytes()}).read_bytes()
    archive = make_zip(tmp_path / "outer.zip", {"inner.ZIP": inner, "cd/DICOMDIR": DICOMDIR.read_bytes()})
    reasons = skipped(sources.walk([archive]))
    assert reasons == {
        f"{archive}/inner.ZIP": "nested archive (not expanded)",
        f"{archive}/cd/DICOMDIR": "DICOMDIR: the media index, not an image; the files it lists are imported themselves",
    }


def test_encrypted_members_are_refused(tmp_path):
    # zipfile cannot write encrypted members; the flag bit is set in the bytes it wrote instead.
    archive = make_zip(tmp_path / "locked.zip", {"a.dcm": dicom_bytes()})
    patch_single_member(archive, flags=0x1)
    with zipfile.ZipFile(archive) as check:
        assert check.infolist()[0].flag_bits & 0x1
    assert refused(sources.walk([archive])) == {f"{archive}/a.dcm": "encrypted archive member"}


def test_zip_bomb_member_is_refused_without_being_expanded(tmp_path):
    folder = tmp_path / "bomb"
    folder.mkdir()
    archive = zeros_member(folder / "bomb.zip", "bomb.dcm", 50 * 1024 * 1024)
    assert archive.stat().st_size < 100_000
    tracemalloc.start()
    try:
        items = list(sources.walk([archive]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (item,) = items
    assert isinstance(item, sources.Refused)
    assert "compression ratio" in item.reason and "zip bomb" in item.reason
    assert peak < 2 * 1024 * 1024  # the 50 MB were never inflated
    assert [p.name for p in folder.iterdir()] == ["bomb.zip"]


def test_archive_expanding_beyond_the_total_limit_is_refused_whole(tmp_path):
    archive = make_zip(tmp_path / "big.zip", {f"{n}.dcm": dicom_bytes() for n in range(3)}, compression=zipfile.ZIP_STORED)
    total = sum(i.file_size for i in zipfile.ZipFile(archive).infolist())
    limits = sources.ZipLimits(max_total_bytes=total - 1)
    assert list(sources.walk([archive], zip_limits=limits)) == [
        sources.Refused(str(archive), f"the archive would expand to {total} bytes; the limit is {total - 1}")
    ]
    assert len(found(sources.walk([archive], zip_limits=sources.ZipLimits(max_total_bytes=total)))) == 3


def test_archive_with_too_many_members_is_refused_whole(tmp_path):
    archive = make_zip(tmp_path / "many.zip", {f"{n}.dcm": b"x" for n in range(6)})
    assert list(sources.walk([archive], zip_limits=sources.ZipLimits(max_members=5))) == [
        sources.Refused(str(archive), "the archive has 6 members; the limit is 5")
    ]
    assert len(list(sources.walk([archive], zip_limits=sources.ZipLimits(max_members=6)))) == 6


def test_member_larger_than_the_member_limit_is_refused(tmp_path):
    data = dicom_bytes()
    archive = make_zip(tmp_path / "a.zip", {"a.dcm": data}, compression=zipfile.ZIP_STORED)
    limits = sources.ZipLimits(max_member_bytes=len(data) - 1)
    assert refused(sources.walk([archive], zip_limits=limits)) == {
        f"{archive}/a.dcm": f"member expands to {len(data)} bytes; the limit is {len(data) - 1}"
    }


@pytest.mark.parametrize("cut", [10, 200, -10])
def test_truncated_or_corrupt_zip_is_refused_with_a_clear_reason(tmp_path, cut):
    whole = make_zip(tmp_path / "whole.zip", {"a.dcm": dicom_bytes(), "b.dcm": dicom_bytes()}).read_bytes()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(whole[:cut])
    (item,) = sources.walk([broken])
    assert item.label == str(broken)
    assert item.reason.startswith("not a readable zip archive")


def test_check_zip_and_member_problem_directly(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.dcm": b"x" * 1000, "b.dcm": b"y"}, compression=zipfile.ZIP_STORED)
    infos = sources.check_zip(archive, GENEROUS)
    assert [i.filename for i in infos] == ["a.dcm", "b.dcm"]
    assert all(sources.member_problem(i, GENEROUS) == "" for i in infos)
    with pytest.raises(sources.UnsafeArchive, match="members"):
        sources.check_zip(archive, sources.ZipLimits(max_members=1))
    with open(archive, "rb") as handle:  # an open file works as well as a path
        assert len(sources.check_zip(handle, GENEROUS)) == 2
    with pytest.raises(sources.UnsafeArchive, match="not a readable zip archive"):
        sources.check_zip(io.BytesIO(b"PK\x03\x04 truncated"), GENEROUS)


def test_members_of_an_open_archive_cannot_be_reopened_by_path(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.dcm": dicom_bytes()})
    with open(archive, "rb") as handle:
        (source,) = sources.zip_members(handle, label="upload.zip", limits=GENEROUS)
    assert source.label == "upload.zip/a.dcm" and source.archive is None and source.member == "a.dcm"
    with pytest.raises(ValueError, match="uploaded archive"):
        source.open()


def test_rewritten_archive_is_reopened_not_served_from_the_cache(tmp_path):
    archive = tmp_path / "a.zip"
    make_zip(archive, {"a.dcm": b"first version"})
    with sources.open_member(archive, "a.dcm") as stream:
        assert stream.read() == b"first version"
    time.sleep(0.01)
    make_zip(archive, {"a.dcm": b"the second, longer version"})
    with sources.open_member(archive, "a.dcm") as stream:
        assert stream.read() == b"the second, longer version"


# --- prepare: hash and parse (what import workers do) ------------------------------------------


def test_prepare_hashes_a_file_as_it_will_be_stored_and_parses_it(tmp_path):
    data = bytearray(dicom_bytes())
    data[:4] = b"MZ\x90\x00"  # a polyglot preamble: the stored copy's digest ignores it
    path = tmp_path / "a.dcm"
    path.write_bytes(bytes(data))
    (source,) = sources.walk([path])
    prepared = sources.prepare(source, max_bytes=BIG, max_inflated_bytes=BIG)
    assert isinstance(prepared, sources.Prepared)
    assert prepared.path == str(path) and prepared.temporary is False
    assert prepared.sha256 == stored_sha256(bytes(data))
    assert prepared.size == len(data)
    assert prepared.parsed.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID
    assert path.read_bytes() == bytes(data)  # the source is never changed


def test_prepare_copies_a_zip_member_to_a_temporary_file(tmp_path):
    data = dicom_bytes()
    archive = make_zip(tmp_path / "a.zip", {"a.dcm": data})
    temp = tmp_path / "temp"
    temp.mkdir()
    (source,) = sources.walk([archive])
    prepared = sources.prepare(source, max_bytes=BIG, max_inflated_bytes=BIG, temp_dir=str(temp))
    assert isinstance(prepared, sources.Prepared) and prepared.temporary is True
    assert Path(prepared.path).parent == temp
    assert Path(prepared.path).read_bytes() == data
    assert prepared.sha256 == stored_sha256(data)
    sources._remove(prepared.path)
    assert list(temp.iterdir()) == []


def test_prepare_refuses_files_over_the_limit_before_reading(tmp_path):
    path = tmp_path / "a.dcm"
    path.write_bytes(dicom_bytes())
    (source,) = sources.walk([path])
    refused = sources.prepare(source, max_bytes=source.size - 1, max_inflated_bytes=BIG)
    assert refused == sources.Refused(str(path), f"the file is larger than the limit of {source.size - 1} bytes")


def test_prepare_refuses_broken_dicom_and_removes_the_temporary_copy(tmp_path):
    good = dicom_bytes()
    archive = make_zip(tmp_path / "a.zip", {"broken.dcm": good[:300], "README.TXT": b"hello"})
    temp = tmp_path / "temp"
    temp.mkdir()
    results = [sources.prepare(s, max_bytes=BIG, max_inflated_bytes=BIG, temp_dir=str(temp)) for s in sources.walk([archive])]
    assert [type(r) for r in results] == [sources.Refused, sources.Refused]
    assert all(r.reason for r in results)
    assert results[0].skipped is False  # broken DICOM; README.TXT: see the xfail in test_bulk_import
    assert list(temp.iterdir()) == []


def test_prepare_marks_a_dicomdir_under_another_name_as_skipped(tmp_path):
    index = tmp_path / "index.dcm"
    index.write_bytes(DICOMDIR.read_bytes())
    (source,) = sources.walk([index])
    refused = sources.prepare(source, max_bytes=BIG, max_inflated_bytes=BIG)
    assert isinstance(refused, sources.Refused) and refused.skipped is True
    assert "DICOMDIR" in refused.reason


def test_prepare_applies_the_inflated_size_limit_to_deflated_transfer_syntax():
    (source,) = sources.walk([PYDICOM_TEST_FILES / "image_dfl.dcm"])
    assert isinstance(sources.prepare(source, max_bytes=BIG, max_inflated_bytes=BIG), sources.Prepared)
    refused = sources.prepare(source, max_bytes=BIG, max_inflated_bytes=1000)
    assert isinstance(refused, sources.Refused) and not refused.skipped


def test_member_whose_declared_size_lies_is_read_only_up_to_it_and_refused(tmp_path):
    # 5 MB of zeros whose central directory claims 4000 bytes: the ratio check passes, so the
    # guard that remains is zipfile stopping at the declared size and then failing the CRC.
    archive = zeros_member(tmp_path / "liar.zip", "liar.dcm", 5 * 1024 * 1024)
    patch_single_member(archive, file_size=4000)
    temp = tmp_path / "temp"
    temp.mkdir()
    (source,) = sources.walk([archive])
    assert source.size == 4000
    refused = sources.prepare(source, max_bytes=BIG, max_inflated_bytes=BIG, temp_dir=str(temp))
    assert isinstance(refused, sources.Refused)
    assert "BadZipFile" in refused.reason and "CRC" in refused.reason
    assert list(temp.iterdir()) == []


def test_worker_init_leaves_ctrl_c_to_the_parent():
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=sources.worker_init) as pool:
        # A stdlib function: the spawned worker must not import this module (and Django) to run it.
        assert pool.submit(signal.getsignal, signal.SIGINT).result(timeout=60) == signal.SIG_IGN


# --- zipstream: archives written as a stream ----------------------------------------------------


def opener(data: bytes, calls: list | None = None, name: str = ""):
    def open_():
        if calls is not None:
            calls.append(name)
        return io.BytesIO(data)

    return open_


def missing_opener():
    raise FileNotFoundError("gone from storage")


def test_stream_zip_writes_a_valid_archive_of_the_members():
    members = {"s1/a.dcm": CT_SMALL.read_bytes(), "s1/b.dcm": b"", "s2/c.dcm": os.urandom(5000)}
    data = b"".join(zipstream.stream_zip((name, opener(body)) for name, body in members.items()))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == list(members)
        assert {name: archive.read(name) for name in members} == members
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())


def test_stream_zip_sends_a_large_member_in_several_chunks_without_buffering_it():
    big = os.urandom(3 * 1024 * 1024 + 17)
    chunks = list(zipstream.stream_zip([("big.dcm", opener(big))]))
    non_empty = [c for c in chunks if c]
    assert len(non_empty) >= 4
    assert max(len(c) for c in chunks) <= zipstream.CHUNK_SIZE + 1024
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.testzip() is None
        assert archive.read("big.dcm") == big


def test_stream_zip_opens_each_member_only_when_it_is_reached():
    calls: list[str] = []
    stream = zipstream.stream_zip((name, opener(b"x" * 10, calls, name)) for name in ["a", "b", "c"])
    next(stream)
    assert calls == ["a"]
    rest = list(stream)
    assert calls == ["a", "b", "c"] and rest


def test_stream_zip_lists_unreadable_members_in_missing_txt():
    members = [("s/a.dcm", opener(b"aaa")), ("s/gone.dcm", missing_opener), ("s/c.dcm", opener(b"ccc"))]
    data = b"".join(zipstream.stream_zip(members))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["s/a.dcm", "s/c.dcm", "MISSING.txt"]
        assert archive.read("MISSING.txt").decode().splitlines()[1:] == ["s/gone.dcm"]


def test_stream_zip_of_nothing_is_an_empty_archive():
    data = b"".join(zipstream.stream_zip([]))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == []


def test_stream_zip_closes_the_member_being_read_when_the_consumer_stops():
    handles: list[io.BytesIO] = []

    def open_big():
        handles.append(io.BytesIO(os.urandom(3 * 1024 * 1024)))
        return handles[-1]

    stream = zipstream.stream_zip([("big.dcm", open_big)])
    next(stream)
    next(stream)
    stream.close()  # what a disconnecting client does to a streaming response
    assert handles[0].closed
