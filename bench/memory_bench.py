#!/usr/bin/env python3
"""Memory benchmark: peak RSS of a gunicorn worker while uploading a ~1 GiB multi-frame file and rendering its frames.

    .venv/bin/python bench/memory_bench.py [--size-mib 1024] [--frame 1000] [--json bench/results/memory.json]

Issue requirement: "Peak RSS of a worker while uploading a 1 GB multi-frame file and while rendering one of its
frames, reported; both bounded well below the file size." Not a unit test. End to end (everything started here is
stopped, and the temp dir with the big file is deleted, in a `finally`):

1. The file, generated on disk, never in memory: pydicom writes a Part-10 file (preamble, DICM, file meta,
   Explicit VR Little Endian, fresh UIDs; Multi-frame Grayscale Word Secondary Capture, 512x512, 16 bits allocated,
   12 stored, MONOCHROME2, NumberOfFrames = ceil(size / 512 KiB)) with every element up to Pixel Data; the
   (7FE0,0010) OW header with its explicit length is appended by hand, then the pixel bytes frame by frame (a
   gradient shifted by the frame number, the frame number in the first 8 pixels, one 512 KiB numpy array at a time).
   The file is re-read with pydicom (stop_before_pixels) as a check; this process's own peak RSS is reported too.
2. The service under `gunicorn -c gunicorn.conf.py dicomsite.wsgi` (2 gthread workers by default), env like
   bench/load_test.py: throwaway PostgreSQL DB (created, migrated, dropped), temp DICOM_MEDIA_ROOT and
   DICOM_UPLOAD_TEMP_DIR in the same temp dir (same filesystem, so storing the staged upload can be a rename),
   LOG_LEVEL=WARNING, throttles raised, GUNICORN_TIMEOUT=1800, GUNICORN_MAX_REQUESTS=0 (no recycling mid-run).
   Warm-up: a few list requests and a small CT upload + render, so imports are done; then baseline RSS per worker.
3. Upload: one http.client connection, raw `Content-Type: application/dicom` POST /api/instances/ with
   Content-Length, the body sent from the open file in 1 MiB chunks. Expect 201 and number_of_frames == frames.
4. Renders, one request each, cache-cold: /image/?frame=F, /thumbnail/ (frame 1), /thumbnail/?frame=F,
   /image/?frame=<last>.
Sampling, in a thread, every --interval (50 ms) for every worker (children of the gunicorn master), from
/proc/<pid>/status and /proc/<pid>/io: VmRSS, RssAnon, RssFile, VmHWM, rchar, wchar. Before each phase the kernel's
peak-RSS counter is reset (`echo 5 > /proc/<pid>/clear_refs`, Linux >= 4.0), so VmHWM at the end of a phase is the
true peak within it (also catching spikes shorter than the sampling interval); if that write is refused, VmHWM is
the peak since the worker started and the report says so. The worker that served a request is the one whose
rchar (bytes read, sockets and files) grew the most during it; its rchar growth is reported too (a render that
reads ~the whole file shows up there even if its RSS stays small).

Output: a table on stdout, JSON in --json (bench/results/ is gitignored). Exit code 1 if a request failed or a
peak exceeded --limit-ratio (default 0.25) of the file size.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import resource
import secrets
import shutil
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import children_of, migrate_and_serve  # noqa: E402
from render_bench import (  # noqa: E402
    HttpClient,
    Postgres,
    free_port,
    log,
    machine_info,
    make_ct_template,
)

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
ROWS = COLS = 512
FRAME_BYTES = ROWS * COLS * 2
MF_GRAY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture Image Storage
UPLOAD_CHUNK = MIB


# --------------------------------------------------------------------------- the file


def write_multiframe(path: Path, frames: int) -> dict:
    """Write a valid Part-10 multi-frame file frame by frame; returns its UIDs and size. Memory: one frame."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MF_GRAY_WORD_SC
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MF_GRAY_WORD_SC
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Memory^Bench"
    ds.PatientID = "MEMBENCH"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = time.strftime("%Y%m%d")
    ds.StudyTime = time.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"memory bench {frames} frames"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = pydicom.tag.Tag(0x0018, 0x2002)  # Frame Label Vector (SC multi-frame default)
    ds.Rows = ROWS
    ds.Columns = COLS
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    pixel_len = frames * FRAME_BYTES  # even, < 4 GiB for any sane --size-mib (checked by the caller)
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    base = ((xx + yy) * 2).astype(np.uint16)  # 0..2044, a diagonal gradient
    with open(path, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)
        # (7FE0,0010) OW, explicit VR LE: tag, VR, 2 reserved bytes, 4-byte length.
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_len))
        for f in range(frames):
            frame = (base + np.uint16((f * 2) % 4096)) & np.uint16(0x0FFF)
            frame[0, :8] = f + 1  # 1-based frame number, readable in the first row
            fh.write(frame.astype("<u2", copy=False).tobytes())
    check = pydicom.dcmread(path, stop_before_pixels=True)
    assert int(check.NumberOfFrames) == frames and check.SOPInstanceUID == ds.SOPInstanceUID
    return {"sop_instance_uid": str(ds.SOPInstanceUID), "frames": frames, "bytes": path.stat().st_size,
            "pixel_data_bytes": pixel_len}  # fmt: skip


# --------------------------------------------------------------------------- /proc sampling


def proc_mem(pid: int) -> dict | None:
    """VmRSS, RssAnon, RssFile, VmHWM (KiB) and rchar (bytes) of a process, or None if it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    out[key] = int(line.split()[1])
        with open(f"/proc/{pid}/io") as fh:
            for line in fh:
                if line.startswith(("rchar:", "wchar:")):
                    out[line[:5]] = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return out


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of a process to its current RSS."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """Samples every worker of the gunicorn master every `interval` s, in a thread; phases mark windows."""

    def __init__(self, master_pid: int, interval: float):
        self.master_pid = master_pid
        self.interval = interval
        self.lock = threading.Lock()
        self.samples: list[tuple[float, int, dict]] = []  # (t, pid, mem)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def workers(self) -> list[int]:
        return sorted(children_of(self.master_pid))

    def snapshot(self) -> dict[int, dict]:
        snap = {}
        for pid in self.workers():
            mem = proc_mem(pid)
            if mem is not None:
                snap[pid] = mem
        return snap

    def _run(self) -> None:
        while not self.stop_event.is_set():
            now = time.monotonic() - self.t0
            snap = self.snapshot()
            with self.lock:
                for pid, mem in snap.items():
                    self.samples.append((now, pid, mem))
            self.stop_event.wait(self.interval)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)

    def phase(self, name: str):
        return Phase(self, name)


class Phase:
    """A window of time: resets VmHWM at the start, and reports per worker the peaks within it."""

    def __init__(self, sampler: Sampler, name: str):
        self.sampler = sampler
        self.name = name

    def __enter__(self) -> Phase:
        self.hwm_reset = {pid: reset_hwm(pid) for pid in self.sampler.workers()}
        self.before = self.sampler.snapshot()
        self.t_start = time.monotonic() - self.sampler.t0
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(self.sampler.interval * 2)  # let the sampler see the tail
        self.t_end = time.monotonic() - self.sampler.t0
        self.after = self.sampler.snapshot()

    def report(self) -> dict:
        with self.sampler.lock:
            window = [(t, pid, m) for t, pid, m in self.sampler.samples if self.t_start <= t <= self.t_end]
        per_worker = {}
        for pid in sorted(set(self.before) | set(self.after) | {p for _, p, _ in window}):
            series = [m for _, p, m in window if p == pid]
            before, after = self.before.get(pid), self.after.get(pid)
            row = {
                "pid": pid,
                "samples": len(series),
                "rss_before_kib": before["VmRSS"] if before else None,
                "rss_after_kib": after["VmRSS"] if after else None,
                "max_sampled_rss_kib": max((m["VmRSS"] for m in series), default=None),
                "max_sampled_anon_kib": max((m.get("RssAnon", 0) for m in series), default=None),
                "max_sampled_file_kib": max((m.get("RssFile", 0) for m in series), default=None),
                "hwm_after_kib": after["VmHWM"] if after else None,
                "hwm_reset": self.hwm_reset.get(pid, False),
                "rchar_delta_bytes": (after["rchar"] - before["rchar"]) if before and after else None,
                "wchar_delta_bytes": (after["wchar"] - before["wchar"]) if before and after else None,
            }
            # Peak within the phase: VmHWM if it was reset at the start (exact), else the sampled maximum.
            cands = [row["max_sampled_rss_kib"] or 0]
            if row["hwm_reset"] and row["hwm_after_kib"]:
                cands.append(row["hwm_after_kib"])
            row["peak_kib"] = max(cands)
            per_worker[pid] = row
        served = max(per_worker.values(), key=lambda r: (r["rchar_delta_bytes"] or 0) + (r["wchar_delta_bytes"] or 0), default=None)
        return {
            "phase": self.name,
            "seconds": round(self.t_end - self.t_start, 3),
            "served_by_pid": served["pid"] if served else None,
            "served_peak_kib": served["peak_kib"] if served else None,
            "served_rss_before_kib": served["rss_before_kib"] if served else None,
            "served_rchar_delta_bytes": served["rchar_delta_bytes"] if served else None,
            "served_wchar_delta_bytes": served["wchar_delta_bytes"] if served else None,
            "max_peak_kib_over_workers": max((r["peak_kib"] for r in per_worker.values()), default=None),
            "workers": list(per_worker.values()),
        }


# --------------------------------------------------------------------------- HTTP


def stream_upload(port: int, token: str, path: Path, timeout: float) -> dict:
    """POST the file as the raw body, read from disk in UPLOAD_CHUNK pieces, with Content-Length."""
    size = path.stat().st_size
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    sent = 0
    send_error = None
    try:
        conn.putrequest("POST", "/api/instances/")
        conn.putheader("Authorization", f"Token {token}")
        conn.putheader("Content-Type", "application/dicom")
        conn.putheader("Content-Length", str(size))
        conn.putheader("Content-Disposition", f'attachment; filename="{path.name}"')
        conn.endheaders()
        with open(path, "rb") as fh:
            while chunk := fh.read(UPLOAD_CHUNK):
                try:
                    conn.send(chunk)
                except (BrokenPipeError, ConnectionResetError) as exc:  # server answered early (e.g. 413)
                    send_error = f"{type(exc).__name__} after {sent} bytes"
                    break
                sent += len(chunk)
        t_sent = time.perf_counter()
        resp = conn.getresponse()
        body = resp.read()
        t_done = time.perf_counter()
    finally:
        conn.close()
    return {"status": resp.status, "body": body, "bytes_sent": sent, "send_error": send_error,
            "send_s": t_sent - t0, "total_s": t_done - t0, "server_after_body_s": t_done - t_sent}  # fmt: skip


def get(port: int, token: str, url: str, timeout: float) -> dict:
    client = HttpClient(port, {"Authorization": f"Token {token}"}, timeout=timeout)
    try:
        st, hdrs, data, secs = client.request("GET", url)
    finally:
        client.close()
    return {"status": st, "content_type": hdrs.get("content-type"), "bytes": len(data), "seconds": secs, "body": data}


# --------------------------------------------------------------------------- main


def mib(kib: int | None) -> str:
    return f"{kib / 1024:8.1f}" if kib is not None else f"{'-':>8}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="file size to generate (MiB); default 1024")
    ap.add_argument("--frame", type=int, default=1000, help="frame to render (1-based); default 1000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--interval", type=float, default=0.05, help="RSS sampling interval, seconds (default 0.05)")
    ap.add_argument("--limit-ratio", type=float, default=0.25,
                    help="fail (exit 1) if a worker's peak RSS exceeds this fraction of the file size")  # fmt: skip
    ap.add_argument("--postgres", default=os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--tmp-dir", default=None, help="where the file and the media go (default: the system temp dir)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    args = ap.parse_args()

    frames = math.ceil(args.size_mib * MIB / FRAME_BYTES)
    if frames * FRAME_BYTES >= 2**32 - 2:
        ap.error("--size-mib too large for an explicit-length Pixel Data element (< 4 GiB)")
    frame = min(max(args.frame, 1), frames)
    tmp_parent = args.tmp_dir or tempfile.gettempdir()
    need = 3 * frames * FRAME_BYTES  # the file, the staged/stored copy, headroom
    free = shutil.disk_usage(tmp_parent).free
    if free < need:
        log(f"not enough free disk in {tmp_parent}: {free / MIB:.0f} MiB free, need ~{need / MIB:.0f} MiB")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="memory-bench-", dir=tmp_parent))
    pg = Postgres(args.postgres)
    pg.name = f"memory_bench_{os.getpid()}_{secrets.token_hex(3)}"
    proc = None
    sampler = None
    notes: list[str] = []
    failures: list[str] = []
    phases: list[dict] = []
    log_tail = ""
    try:
        # ---- 1. the file
        big = tmp / "multiframe.dcm"
        log(f"writing {frames} frames of {ROWS}x{COLS} uint16 ({frames * FRAME_BYTES / MIB:.0f} MiB pixel data) to {big}")
        t = time.perf_counter()
        file_info = write_multiframe(big, frames)
        file_info["write_s"] = round(time.perf_counter() - t, 1)
        file_info["client_peak_rss_kib_after_write"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        log(f"wrote {file_info['bytes'] / MIB:.1f} MiB in {file_info['write_s']}s; this process's peak RSS "
            f"{file_info['client_peak_rss_kib_after_write'] / 1024:.0f} MiB")  # fmt: skip
        file_size = file_info["bytes"]

        # ---- 2. the service
        media, upload_tmp = tmp / "media", tmp / "upload-tmp"
        media.mkdir()
        upload_tmp.mkdir()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DICOM_", "GUNICORN_"))
               and k not in ("DATABASE_URL", "REDIS_URL", "LOG_LEVEL")}  # fmt: skip
        env.update({
            "DJANGO_SECRET_KEY": "memory-bench-" + secrets.token_hex(16),
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": pg.create(),
            "DICOM_MEDIA_ROOT": str(media),
            "DICOM_UPLOAD_TEMP_DIR": str(upload_tmp),
            "DICOM_THROTTLE_UPLOAD": "1000000/min",
            "DICOM_THROTTLE_RENDER": "1000000/min",
            "LOG_LEVEL": "WARNING",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": str(args.workers),
            "GUNICORN_TIMEOUT": "1800",
            "GUNICORN_MAX_REQUESTS": "0",
            "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        default_max = 2 * 1024**3
        if file_size > default_max:
            env["DICOM_MAX_UPLOAD_BYTES"] = str(file_size + MIB)
            notes.append(f"DICOM_MAX_UPLOAD_BYTES raised to {file_size + MIB} for this file size")
        log(f"database {pg.name}; migrating")
        proc, token = migrate_and_serve(env, tmp, port, args.workers, username="membench")
        deadline = time.monotonic() + 30
        while len(children_of(proc.popen.pid)) < args.workers and time.monotonic() < deadline:
            time.sleep(0.1)

        # Warm-up: imports (DRF, pydicom, numpy, Pillow) in whichever workers the requests reach.
        import io

        small = make_ct_template()
        small.SOPInstanceUID = small.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        small.save_as(buf, enforce_file_format=True)
        client = HttpClient(port, {"Authorization": f"Token {token}"})
        st, _, data, _ = client.request("POST", "/api/instances/", body=buf.getvalue(), headers={"Content-Type": "application/dicom"})
        if st != 201:
            raise RuntimeError(f"warm-up upload: HTTP {st}: {data[:300]!r}")
        small_id = json.loads(data)["id"]
        client.close()
        for i in range(6):  # new connections, so both workers likely get some
            get(port, token, "/api/instances/", 60)
            get(port, token, f"/api/instances/{small_id}/image/?size={128 + i}", 60)
            get(port, token, f"/api/instances/{small_id}/thumbnail/?size={64 + i}", 60)
        time.sleep(1.0)

        sampler = Sampler(proc.popen.pid, args.interval)
        baseline = sampler.snapshot()
        log("baseline RSS: " + ", ".join(f"pid {p} {m['VmRSS'] / 1024:.1f} MiB" for p, m in baseline.items()))
        sampler.start()

        # ---- 3. upload
        log(f"uploading {file_size / MIB:.0f} MiB (raw body, {UPLOAD_CHUNK // 1024} KiB chunks)")
        with sampler.phase("upload") as ph:
            up = stream_upload(port, token, big, timeout=1800)
        rep = ph.report()
        instance_id = None
        up_json = {}
        with contextlib.suppress(ValueError):
            up_json = json.loads(up["body"])
        rep.update({"status": up["status"], "bytes_sent": up["bytes_sent"], "send_error": up["send_error"],
                    "send_s": round(up["send_s"], 2), "total_s": round(up["total_s"], 2),
                    "server_after_body_s": round(up["server_after_body_s"], 2),
                    "throughput_mib_s": round(up["bytes_sent"] / MIB / up["total_s"], 1),
                    "response": up_json or up["body"][:500].decode(errors="replace")})  # fmt: skip
        phases.append(rep)
        log(f"upload: HTTP {up['status']} in {up['total_s']:.1f}s ({rep['throughput_mib_s']} MiB/s; "
            f"{up['server_after_body_s']:.1f}s after the last byte); peak RSS {rep['served_peak_kib'] / 1024:.0f} MiB")  # fmt: skip
        if up["status"] != 201:
            failures.append(f"upload: HTTP {up['status']}: {up['body'][:300]!r}")
        else:
            instance_id = up_json.get("id")
            if up_json.get("number_of_frames") != frames:
                failures.append(f"upload: number_of_frames {up_json.get('number_of_frames')} != {frames}")

        # ---- 4. renders
        if instance_id:
            renders = [
                ("render frame %d" % frame, f"/api/instances/{instance_id}/image/?frame={frame}"),
                ("thumbnail (frame 1)", f"/api/instances/{instance_id}/thumbnail/"),
                ("thumbnail frame %d" % frame, f"/api/instances/{instance_id}/thumbnail/?frame={frame}"),
                ("render last frame %d" % frames, f"/api/instances/{instance_id}/image/?frame={frames}"),
            ]
            bodies = {}
            for name, url in renders:
                with sampler.phase(name) as ph:
                    r = get(port, token, url, 1800)
                rep = ph.report()
                rep.update({"url": url.replace(instance_id, "{id}"), "status": r["status"], "seconds": round(r["seconds"], 3),
                            "content_type": r["content_type"], "response_bytes": r["bytes"]})  # fmt: skip
                if r["status"] != 200:
                    rep["response"] = r["body"][:500].decode(errors="replace")
                    failures.append(f"{name}: HTTP {r['status']}: {r['body'][:300]!r}")
                bodies[name] = r["body"]
                phases.append(rep)
                log(f"{name}: HTTP {r['status']} in {r['seconds']:.2f}s, {r['bytes']} bytes; peak RSS "
                    f"{rep['served_peak_kib'] / 1024:.0f} MiB, worker read {(rep['served_rchar_delta_bytes'] or 0) / MIB:.1f} MiB")  # fmt: skip
            # The frames differ (gradient shifted by the frame number): identical images would mean the frame was ignored.
            first = get(port, token, f"/api/instances/{instance_id}/image/?frame=1", 600)
            if first["status"] == 200 and first["body"] == bodies.get("render frame %d" % frame) and frame != 1:
                failures.append(f"frame {frame} rendered identical to frame 1: ?frame= ignored?")
            if bodies.get("thumbnail (frame 1)") and bodies.get("thumbnail (frame 1)") == bodies.get("thumbnail frame %d" % frame):
                notes.append(f"thumbnail ?frame={frame} identical to the default thumbnail (frame 1): ?frame= ignored by /thumbnail/?")
        if not proc.alive():
            failures.append(f"gunicorn master died (code {proc.popen.returncode})")
        log_tail = proc.log_tail(40)
    finally:
        if sampler is not None:
            sampler.stop()
        if proc is not None:
            proc.stop()
        pg.drop()
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            log(f"could not fully delete {tmp}")

    # ------------------------------------------------------------------ report
    base_by_pid = {pid: m["VmRSS"] for pid, m in baseline.items()}
    base_max = max(base_by_pid.values()) if base_by_pid else None
    file_kib = file_size / 1024
    hwm_exact = all(w["hwm_reset"] for p in phases for w in p["workers"])
    print()
    print(f"memory bench: {frames} frames {ROWS}x{COLS} uint16, file {file_size / MIB:.1f} MiB; gunicorn -c gunicorn.conf.py, "
          f"{args.workers} gthread workers; PostgreSQL; nproc={os.cpu_count()}; RSS sampled every {args.interval * 1000:.0f} ms"
          f"{' + VmHWM reset per phase' if hwm_exact else ' (VmHWM not resettable: peaks are sampled maxima)'}")  # fmt: skip
    print("baseline RSS per worker (MiB, warm): " + ", ".join(f"{p}: {k / 1024:.1f}" for p, k in base_by_pid.items()))
    print()
    hdr = f"{'phase':<24} {'HTTP':>4} {'secs':>7} {'pid':>8} {'base MiB':>8} {'peak MiB':>8} {'+MiB':>8} {'anon MiB':>8} {'file MiB':>8} {'peak/file':>9} {'+/file':>7} {'read MiB':>9} {'wrote MiB':>9}"
    print(hdr)
    print("-" * len(hdr))
    for p in phases:
        w = next((x for x in p["workers"] if x["pid"] == p["served_by_pid"]), None)
        base = base_by_pid.get(p["served_by_pid"]) or (w and w["rss_before_kib"])
        peak = p["served_peak_kib"]
        secs = p.get("total_s", p.get("seconds"))
        growth = (peak - base) if peak and base else None
        p["served_baseline_kib"] = base
        p["served_growth_kib"] = growth
        p["peak_over_file"] = round(peak / file_kib, 4) if peak else None
        p["growth_over_file"] = round(growth / file_kib, 4) if growth is not None else None
        gof = f"{p['growth_over_file']:.3f}" if p["growth_over_file"] is not None else "-"
        print(f"{p['phase']:<24} {p['status']:>4} {secs:>7.2f} {p['served_by_pid']:>8} {mib(base)} {mib(peak)} {mib(growth)} "
              f"{mib(w and w['max_sampled_anon_kib'])} {mib(w and w['max_sampled_file_kib'])} "
              f"{p['peak_over_file']:>9.3f} {gof:>7} "
              f"{(p['served_rchar_delta_bytes'] or 0) / MIB:>9.1f} {(p['served_wchar_delta_bytes'] or 0) / MIB:>9.1f}")  # fmt: skip
        if p["max_peak_kib_over_workers"] and peak and p["max_peak_kib_over_workers"] > peak:
            notes.append(f"{p['phase']}: another worker peaked higher ({p['max_peak_kib_over_workers'] / 1024:.0f} MiB)")
    up = next((p for p in phases if p["phase"] == "upload"), None)
    if up:
        print(f"\nupload: {up['bytes_sent'] / MIB:.0f} MiB in {up['total_s']:.1f}s = {up['throughput_mib_s']} MiB/s "
              f"(body sent in {up['send_s']:.1f}s, response {up['server_after_body_s']:.1f}s after the last byte)")  # fmt: skip
    print(f"client (this script) peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(file written and sent in chunks)")  # fmt: skip
    print("columns: peak = max(VmHWM after a per-phase reset, sampled VmRSS) of the worker that served the request "
          "(the one whose rchar+wchar grew most); +MiB = peak - its warm baseline; anon/file = sampled max RssAnon/RssFile; "
          "read/wrote MiB = its rchar/wchar growth (file reads/writes; socket recv not counted)")  # fmt: skip
    limit_kib = args.limit_ratio * file_kib
    for p in phases:
        if (p["max_peak_kib_over_workers"] or 0) > limit_kib:
            failures.append(f"{p['phase']}: peak RSS {p['max_peak_kib_over_workers'] / 1024:.0f} MiB > "
                            f"{args.limit_ratio:.0%} of the file ({limit_kib / 1024:.0f} MiB)")  # fmt: skip
        if p["phase"] != "upload" and (p["served_rchar_delta_bytes"] or 0) > file_size / 4:
            notes.append(f"{p['phase']}: the worker read {p['served_rchar_delta_bytes'] / MIB:.0f} MiB for one frame "
                         f"({FRAME_BYTES // 1024} KiB): the render path reads (most of) the file")  # fmt: skip
    for n in notes:
        print(f"note: {n}")
    for f in failures:
        print(f"FAIL: {f}")
    out = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "config": {"size_mib": args.size_mib, "frames": frames, "frame": frame, "workers": args.workers,
                   "interval_s": args.interval, "limit_ratio": args.limit_ratio, "upload_chunk_bytes": UPLOAD_CHUNK,
                   "hwm_reset_per_phase": hwm_exact, "database": "PostgreSQL (throwaway)"},  # fmt: skip
        "file": file_info,
        "baseline_rss_kib": base_by_pid,
        "baseline_rss_max_kib": base_max,
        "phases": phases,
        "client_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "notes": notes,
        "failures": failures,
    }
    if failures:
        out["server_log_tail"] = log_tail
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
