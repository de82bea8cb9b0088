#!/usr/bin/env python3
"""DICOMweb benchmark: the same STOW-RS, QIDO-RS and WADO-RS requests against this service and Orthanc's DICOMweb plugin.

    .venv/bin/python bench/dicomweb_bench.py [--n 200] [--clients 4] [--json bench/results/dicomweb.json]

End to end (everything started here is stopped in a `finally`, by process group; the database is dropped):

1. Workload (render_bench.make_ct_template: CT_small.dcm upscaled to 512x512 16-bit, Explicit VR LE, ~0.5 MB,
   one study and one series per patient via render_bench.Workload): --n files with fresh SOP Instance UIDs,
   the first --series-size (default 100, at most 100: the service's default QIDO limit) for Smith^John /
   BENCH-P1, the others alternating between Garcia^Maria / BENCH-P2 and Nakamura^Ken / BENCH-P3 (the patients
   of http_bench). The same bytes go to both servers. --warmup files of a fourth patient, Warmup^Bench, are
   stored first and every read below is run on them a few times before anything is timed.
2. Servers:
   - the service under gunicorn (http_bench.ThrottledService: render_bench.Service with the upload and render
     throttles raised), DEBUG off, throwaway PostgreSQL database, `Authorization: Token` on every request,
     DICOMweb under /dicomweb/;
   - Orthanc (render_bench.Orthanc, temp config, no auth, loopback) with the Debian DICOMweb plugin
     (--orthanc-plugin, default /usr/share/orthanc/plugins/libOrthancDicomWeb.so) under /dicom-web/, plugin
     options at their defaults (so "SeriesMetadata": "Full": metadata is read from the stored files).
3. Measurements (http_bench.run: --clients threads on their own kept-alive connections, wall time from sending
   the request to the last byte of the body; every reply is checked, a failed one is counted and reported):
   - STOW-RS: `POST /studies`, `multipart/related; type="application/dicom"`, one instance per request, every
     file once; reply must reference that SOP Instance UID and list no failure;
   - QIDO-RS studies: `GET /studies?PatientName=<pattern>&includefield=00081030,00080060&limit=101` (OHIF's
     study list), --n-query requests cycling over *smith*, *a*, Naka*; the study UIDs returned must be the
     ones whose patient name matches (case-insensitively), on both servers;
   - QIDO-RS series of a study (`/studies/{study}/series`, cycling over the 3 studies), instances of the large
     series (`/studies/{study}/series/{series}/instances`), WADO-RS metadata of the large series
     (`.../series/{series}/metadata`, Accept application/dicom+json): --n-query requests each, UIDs checked;
   - WADO-RS frame 1 of every instance (`.../instances/{sop}/frames/1`, Accept `multipart/related;
     type="application/octet-stream"; transfer-syntax=*`): the one part must equal the file's Pixel Data;
   - WADO-RS rendered of every instance (`.../instances/{sop}/rendered`, Accept image/jpeg): a 512x512 JPEG;
     a server answering 400/404/405/406/415/501 to it on the warm-up instance gets "n/a" with a note instead.
     Then the same with `?window=40,400,linear` (the file's own window, asked for explicitly), since Orthanc's
     plugin does not apply the file's WindowCenter/Width by default; whether the two servers' JPEGs are
     byte-identical is noted for both rows;
   - WADO-RS instance retrieve of every instance (Accept `multipart/related; type="application/dicom";
     transfer-syntax=*`): the one part must be the stored file, byte for byte (SHA-256).
   The per-instance reads each touch every instance once (no server-side cache of a repeated URL helps).

Output: machine info, the exact command, one table (rows p50 / p95 / throughput per request, service,
orthanc, ratio = service/orthanc, which direction is better), notes, and JSON in --json: {"rows": [{"row",
"service", "orthanc", "ratio", "unit", "better"}...], plus config, machine and per-measurement details}, the
shape bench/run.py reads. Exit 1 if any request failed.
"""

from __future__ import annotations

import argparse
import collections
import copy
import fnmatch
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import http_bench as hb
import render_bench as rb

ROOT = rb.ROOT
log = rb.log
Req, Measure = hb.Req, hb.Measure
WARMUP_PATIENT = ("Warmup^Bench", "BENCH-WARMUP")
NAME_PATTERNS = ["*smith*", "*a*", "Naka*"]  # OHIF sends the typed text between asterisks
JSON_ACCEPT = {"Accept": "application/dicom+json"}
FRAME_ACCEPT = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
RENDERED_ACCEPT = {"Accept": "image/jpeg"}
DICOM_ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
UNSUPPORTED = (400, 404, 405, 406, 415, 501)  # what a server that lacks a resource answers
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PREAMBLE_LENGTH = 128
WINDOW_QUERY = "window=40,400,linear"  # the template's WindowCenter/WindowWidth, asked for explicitly


class Server:
    """One side of the comparison: how to reach its DICOMweb root and what it answered."""

    def __init__(self, name: str, proc_owner, root: str):
        self.name = name
        self.owner = proc_owner  # ThrottledService or rb.Orthanc (start/stop/client/proc)
        self.root = root
        self.skipped: dict[str, str] = {}  # measurement -> why it was not run

    def client(self) -> rb.HttpClient:
        return self.owner.client()

    def path(self, *parts: str, query: str = "") -> str:
        return "/".join([self.root, *parts]) + (f"?{query}" if query else "")


# --------------------------------------------------------------------------- request bodies and replies


def new_copy(load: rb.Workload) -> tuple[str, bytes]:
    """(SOP Instance UID, file) of a fresh copy: Workload.copy_bytes leaves the UID it chose on the template."""
    content = load.copy_bytes()
    return str(load.template.SOPInstanceUID), content


def stow_body(content: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "dicomweb-bench-" + secrets.token_hex(12)
    body = b"".join([f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), content, f"\r\n--{boundary}--\r\n".encode()])
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}', **JSON_ACCEPT}


def multipart_payloads(body: bytes) -> list[bytes]:
    """The parts' contents of a multipart body whose first line is its delimiter (no preamble); the close
    delimiter must be there (a body cut short is an error)."""
    first, sep, _ = body.partition(b"\r\n")
    if not sep or not first.startswith(b"--") or len(first) < 3:
        raise ValueError(f"not a multipart body: starts {body[:60]!r}")
    pieces = body.split(b"\r\n" + first)
    pieces[0] = pieces[0][len(first) :]
    payloads = []
    for piece in pieces:
        if piece.startswith(b"--"):
            return payloads
        _, found, content = piece.partition(b"\r\n\r\n")
        if not found:
            raise ValueError("a part without a blank line after its headers")
        payloads.append(content)
    raise ValueError("no close delimiter: the body was cut short")


def values(item: dict, tag: str) -> list:
    return (item.get(tag) or {}).get("Value") or []


def check_stow(sop: str):
    def check(status: int, data: bytes) -> str | None:
        reply = json.loads(data)
        stored = [values(ref, "00081155") for ref in values(reply, "00081199")]
        failed = values(reply, "00081198")
        return None if stored == [[sop]] and not failed else f"stored {stored}, failed {failed}"

    return check


def check_uids(tag: str, expected: set[str]):
    """A DICOM JSON array holding exactly one data set per expected UID."""

    def check(status: int, data: bytes) -> str | None:
        got = [(values(item, tag) or [None])[0] for item in json.loads(data)]
        if len(got) == len(expected) and set(got) == expected:
            return None
        return f"expected {len(expected)} {tag} values, got {len(got)} ({len(set(got) & expected)} of the expected)"

    return check


def check_single_part(expected: dict[str, str], seen: list[str]):
    """One part whose SHA-256 is a key of `expected` (hash -> what that content is); appends what it was to `seen`."""

    def check(status: int, data: bytes) -> str | None:
        parts = multipart_payloads(data)
        if len(parts) != 1:
            return f"{len(parts)} parts, expected 1"
        what = expected.get(hashlib.sha256(parts[0]).hexdigest())
        seen.append(what or "other")
        return None if what else f"the part ({len(parts[0])} bytes) is none of: {', '.join(expected.values())}"

    return check


def check_jpeg(size: int, seen: list[str]):
    """A size x size JPEG; appends its SHA-256 to `seen` (every copy has the same pixels, so one image is expected)."""

    def check(status: int, data: bytes) -> str | None:
        got = rb.image_info(data)
        if (got.get("format"), got.get("width"), got.get("height")) != ("jpeg", size, size):
            return f"expected a {size}x{size} JPEG, got {got}"
        seen.append(hashlib.sha256(data).hexdigest())
        return None

    return check


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="files stored in each server, and per-instance reads; default 200")
    ap.add_argument("--series-size", type=int, default=100, help="instances in the large series (<= 100); default 100")
    ap.add_argument("--n-query", type=int, default=None, help="requests per QIDO / metadata measurement (default: --n)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (threads, kept-alive connections); default 4")
    ap.add_argument("--warmup", type=int, default=8, help="Warmup^Bench files stored (and read) per server before timing")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    ap.add_argument("--throttle", default="1000000/min", help="DICOM_THROTTLE_UPLOAD and _RENDER for the service")
    ap.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432", help="server for the throwaway database")
    ap.add_argument("--orthanc-bin", default="/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else "Orthanc")
    ap.add_argument("--orthanc-plugin", default="/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    ap.add_argument("--orthanc-port", type=int, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "dicomweb.json")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server logs, stored files)")
    args = ap.parse_args(argv)
    if not 1 <= args.series_size <= 100 or args.n < args.series_size + 2:
        ap.error("--series-size must be 1..100 and --n at least --series-size + 2 (one file for each other patient)")
    args.n_query = args.n if args.n_query is None else args.n_query
    args.clients = max(1, args.clients)
    # What render_bench.Service / Orthanc read from their args.
    args.server, args.database_url, args.service_port = "gunicorn", None, None
    return args


def exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)  # so that the finally blocks stop the servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd() + os.sep) else sys.executable
    command = shlex.join([python, *sys.argv])
    t0 = time.monotonic()
    info = rb.machine_info()
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="dicomweb-bench-"))
    hb.ThrottledService.throttle = args.throttle
    service = Server("service", hb.ThrottledService(tmp, args, notes), "/dicomweb")
    dicomweb_config = {"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    orthanc = Server("orthanc", rb.Orthanc(tmp, args, plugins=[args.orthanc_plugin], config=dicomweb_config), "/dicom-web")
    servers = (service, orthanc)

    # ---------------- workload: the same bytes for both servers
    n, clients = args.n, args.clients
    log(f"generating {n} + {args.warmup} CT files ({rb.CT_SIZE}x{rb.CT_SIZE})")
    template = rb.make_ct_template()
    pixel_sha = {hashlib.sha256(template.PixelData).hexdigest(): "the file's Pixel Data"}
    seen: dict[tuple[str, str], list[str]] = collections.defaultdict(list)  # (measurement, server) -> what each checked part was
    jpegs: dict[tuple[str, str], list[str]] = collections.defaultdict(list)  # (measurement, server) -> SHA-256 of each JPEG
    loads = []
    for name, pid in [*hb.PATIENTS, WARMUP_PATIENT]:
        t = copy.deepcopy(template)  # Dataset.copy() shares the data elements
        t.PatientName, t.PatientID = name, pid
        loads.append(rb.Workload(t, f"dicomweb-bench {pid}"))
    warm = loads.pop()
    owners = [0 if i < args.series_size else 1 + (i - args.series_size) % 2 for i in range(n)]
    files: list[tuple[str, bytes]] = []  # (SOP Instance UID, file), in sending order
    sops: list[list[str]] = [[] for _ in loads]  # per patient (= study = series)
    for k in owners:
        files.append(new_copy(loads[k]))
        sops[k].append(files[-1][0])
    warm_files = [new_copy(warm) for _ in range(args.warmup)]
    all_sops = [sop for sop, _ in files]  # files is emptied after STOW
    # The service stores files with the 128-byte preamble zeroed (PS3.10 7.5; README): either is "the stored file".
    file_sha = {sop: {hashlib.sha256(content).hexdigest(): "the file as sent",
                      hashlib.sha256(bytes(PREAMBLE_LENGTH) + content[PREAMBLE_LENGTH:]).hexdigest(): "the file with its preamble zeroed"}
                for sop, content in files}  # fmt: skip
    location = {sop: (loads[k].study, loads[k].series) for k, per in enumerate(sops) for sop in per}
    total_bytes = sum(len(content) for _, content in files)
    names = [name for name, _ in [*hb.PATIENTS, WARMUP_PATIENT]]
    study_of_name = {name: load.study for name, load in zip(names, [*loads, warm])}
    log(f"workload: {n} files, {total_bytes / 1e6:.1f} MB, per patient {[len(s) for s in sops]}")

    def instance_path(server: Server, sop: str, *rest: str) -> str:
        study, series = location[sop]
        return server.path("studies", study, "series", series, "instances", sop, *rest)

    def matching_studies(pattern: str) -> set[str]:
        return {uid for name, uid in study_of_name.items() if fnmatch.fnmatchcase(name.lower(), pattern.lower())}

    def study_search(server: Server, pattern: str) -> Req:
        query = f"PatientName={quote(pattern, safe='*^')}&includefield=00081030,00080060&limit=101"
        return Req("GET", server.path("studies", query=query), headers=JSON_ACCEPT, check=check_uids(STUDY_UID, matching_studies(pattern)))

    # The measurements: key -> (label, unit of the throughput row, requests for a server).
    big = loads[0]
    plan = {
        "stow": ("STOW-RS store, 1 instance/request", "files/s",
                 lambda s: [Req("POST", s.path("studies"), *stow_body(content), check_stow(sop)) for sop, content in files]),
        "qido_studies": ("QIDO-RS studies PatientName=*x* +includefield", "req/s",
                         lambda s: [study_search(s, NAME_PATTERNS[i % len(NAME_PATTERNS)]) for i in range(args.n_query)]),
        "qido_series": ("QIDO-RS series of a study", "req/s",
                        lambda s: [Req("GET", s.path("studies", loads[i % len(loads)].study, "series"), headers=JSON_ACCEPT,
                                       check=check_uids(SERIES_UID, {loads[i % len(loads)].series})) for i in range(args.n_query)]),
        "qido_instances": (f"QIDO-RS instances of a series ({len(sops[0])})", "req/s",
                           lambda s: [Req("GET", s.path("studies", big.study, "series", big.series, "instances"), headers=JSON_ACCEPT,
                                          check=check_uids(SOP_UID, set(sops[0])))] * args.n_query),
        "metadata": (f"WADO-RS series metadata ({len(sops[0])} instances)", "req/s",
                     lambda s: [Req("GET", s.path("studies", big.study, "series", big.series, "metadata"), headers=JSON_ACCEPT,
                                    check=check_uids(SOP_UID, set(sops[0])))] * args.n_query),
        "frame": ("WADO-RS frame 1, octet-stream transfer-syntax=*", "req/s",
                  lambda s: [Req("GET", instance_path(s, sop, "frames", "1"), headers=FRAME_ACCEPT,
                                 check=check_single_part(pixel_sha, seen["frame", s.name])) for sop in all_sops]),
        "rendered": ("WADO-RS rendered instance, image/jpeg", "req/s",
                     lambda s: [Req("GET", instance_path(s, sop, "rendered"), headers=RENDERED_ACCEPT,
                                    check=check_jpeg(rb.CT_SIZE, jpegs["rendered", s.name])) for sop in all_sops]),
        "rendered_window": (f"WADO-RS rendered ?{WINDOW_QUERY}", "req/s",
                            lambda s: [Req("GET", instance_path(s, sop, "rendered") + "?" + WINDOW_QUERY, headers=RENDERED_ACCEPT,
                                           check=check_jpeg(rb.CT_SIZE, jpegs["rendered_window", s.name])) for sop in all_sops]),
        "retrieve": ("WADO-RS retrieve instance, transfer-syntax=*", "req/s",
                     lambda s: [Req("GET", instance_path(s, sop), headers=DICOM_ACCEPT, check=check_single_part(file_sha[sop], seen["retrieve", s.name]))
                                for sop in all_sops]),
    }  # fmt: skip
    m: dict[tuple[str, str], Measure] = {}
    warm_measures: list[Measure] = []
    plugin_version = None
    server_logs = {}
    try:
        for s in servers:
            s.owner.start()
        c = orthanc.client()
        status, _, data, _ = c.request("GET", "/plugins/dicom-web")
        c.close()
        plugin_version = json.loads(data).get("Version") if status == 200 else f"? (GET /plugins/dicom-web: HTTP {status})"

        # ---------------- warm-up: store the Warmup^Bench files, then every read a few times, not timed
        for s in servers:
            reqs = [Req("POST", s.path("studies"), *stow_body(content), check_stow(sop)) for sop, content in warm_files]
            warm_measures.append(hb.run(Measure("warmup stow", s.name, ""), s.client, reqs, 1, ok_statuses=(200,)))
            w = warm_files[0][0]
            status, _, data = rb.probe(s, s.path("studies", warm.study, "series", warm.series, "instances", w, "rendered"), RENDERED_ACCEPT)
            if status in UNSUPPORTED:
                why = f"HTTP {status} to .../instances/{{sop}}/rendered on the warm-up instance: {data[:150]!r}"
                s.skipped.update(rendered=why, rendered_window=why)
            series_path = s.path("studies", warm.study, "series", warm.series)
            reads = [Req("GET", s.path("studies", query="PatientName=Warmup*&includefield=00081030,00080060&limit=101"), headers=JSON_ACCEPT),
                     Req("GET", s.path("studies", warm.study, "series"), headers=JSON_ACCEPT),
                     Req("GET", f"{series_path}/instances", headers=JSON_ACCEPT),
                     Req("GET", f"{series_path}/metadata", headers=JSON_ACCEPT),
                     *[Req("GET", f"{series_path}/instances/{sop}/frames/1", headers=FRAME_ACCEPT) for sop, _ in warm_files],
                     *[Req("GET", f"{series_path}/instances/{sop}", headers=DICOM_ACCEPT) for sop, _ in warm_files]]  # fmt: skip
            if "rendered" not in s.skipped:
                reads += [Req("GET", f"{series_path}/instances/{sop}/rendered", headers=RENDERED_ACCEPT) for sop, _ in warm_files]
            warm_measures.append(hb.run(Measure("warmup reads", s.name, ""), s.client, reads * (2 * args.workers + 2), clients, ok_statuses=(200,)))
        log(f"servers warm ({time.monotonic() - t0:.0f}s since start)")

        # ---------------- measured, one request kind at a time, service then Orthanc
        for key, (label, _, make_reqs) in plan.items():
            for s in servers:
                if key in s.skipped:
                    continue
                reqs = make_reqs(s)
                log(f"{key}: {s.name} x{len(reqs)}, {clients} clients")
                example = f"{reqs[0].method} {reqs[0].path[:160]}"
                m[key, s.name] = hb.run(Measure(key, s.name, example), s.client, reqs, clients, ok_statuses=(200,))
                m[key, s.name].results.clear()  # the bodies (up to ~0.5 MB each) were checked; keep the memory
            if key == "stow":
                del files[:]  # ~0.5 MB each; UIDs and hashes are kept
        log(f"measured ({time.monotonic() - t0:.0f}s since start)")
    finally:
        for s in servers:
            server_logs[s.name] = s.owner.proc.log_tail(40) if s.owner.proc else ""
            s.owner.stop()  # gunicorn (then DROP DATABASE), Orthanc
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---------------- report
    rows = []
    for key, (label, rate_unit, _) in plan.items():
        measured = {s.name: m.get((key, s.name)) for s in servers}
        for stat, unit, better in (("p50", "ms", "lower"), ("p95", "ms", "lower"), ("rate", rate_unit, "higher")):
            cell = {}
            for name, one in measured.items():
                if one is None or not one.latencies_ms:
                    cell[name] = None
                elif stat == "rate":
                    cell[name] = len(one.latencies_ms) / one.wall_s
                else:
                    cell[name] = one.p(0.5 if stat == "p50" else 0.95)
            sv, ov = cell["service"], cell["orthanc"]
            row_label = f"{label} {'throughput' if stat == 'rate' else stat}"
            rows.append({"row": row_label, "service": hb._r(sv), "orthanc": hb._r(ov), "ratio": hb._r(sv / ov, 3) if sv is not None and ov else None,
                         "unit": unit, "better": better})  # fmt: skip

    for s in servers:
        for key, why in s.skipped.items():
            notes.append(f"{s.name} does not support '{plan[key][0]}': n/a ({why})")
    for one in [*warm_measures, *m.values()]:
        if one.errors:
            notes.append(f"{one.server} {one.name}: {len(one.errors)} of {sum(one.statuses.values())} requests failed, "
                         f"statuses {one.statuses}, e.g. {one.errors[0][:300]}")  # fmt: skip
    for (key, server), found in seen.items():
        counts = collections.Counter(found)
        notes.append(f"{server} {key}: the part was " + ", ".join(f"{what} ({count}x)" for what, count in counts.most_common()))
    for key in ("rendered", "rendered_window"):
        got = {s.name: set(jpegs.get((key, s.name), [])) for s in servers}
        if all(got.values()):
            same = got["service"] == got["orthanc"] and len(got["service"]) == 1
            notes.append(f"{plan[key][0]}: the two servers' JPEGs were {'identical' if same else 'different'} "
                         f"({len(got['service'])} distinct from the service, {len(got['orthanc'])} from Orthanc)"
                         + ("" if same or key != "rendered" else "; without window= Orthanc's plugin does not apply the file's "
                            "WindowCenter/Width 40/400 (the service does), so that row compares different images"))  # fmt: skip
    mean_bytes = {f"{k[1]} {k[0]}": round(v.bytes_received / max(1, sum(v.statuses.values()))) for k, v in m.items()}
    notes.append("mean response bytes: " + ", ".join(f"{k} {v}" for k, v in mean_bytes.items() if not k.endswith("stow")))
    notes.append(f"files per patient {[len(s) for s in sops]} (one study and one series each); QIDO study searches cycle "
                 f"over {NAME_PATTERNS}, matching {[len(matching_studies(p)) for p in NAME_PATTERNS]} studies (incl. the warm-up one)")  # fmt: skip
    notes.append("Orthanc's plugin runs with its defaults: series metadata 'Full' reads every DICOM file of the series per request "
                 "(and instance-level QIDO probably reads the files too for its default attributes outside Orthanc's index, such as "
                 "Rows/Columns); the service answers both from the database (columns and the stored header JSON)")  # fmt: skip

    pk = info["packages"]
    dirty = " (uncommitted changes in studies/ or dicomsite/)" if info["git"].get("uncommitted_changes_in_studies_or_dicomsite") else ""
    header = [
        f"command: {command}",
        f"machine: nproc={info['nproc']} (usable {info['cpus_usable']}), {info['cpu_model']}, {info['platform']}",
        (f"python {info['python']}; Django {pk['Django']}, gunicorn {pk['gunicorn']}, psycopg {pk['psycopg']}, pydicom {pk['pydicom']}; "
         f"Orthanc {orthanc.owner.version or 'n/a'} + DICOMweb plugin {plugin_version or 'n/a'}"),
        (f"service: {service.owner.server_desc}, PostgreSQL (throwaway DB), token auth, throttles {args.throttle}; "
         f"repo {info['git'].get('commit', '?')}{dirty}"),
        (f"workload: n={n} CT {rb.CT_SIZE}x{rb.CT_SIZE} 16-bit files, {total_bytes / 1e6:.1f} MB; QIDO/metadata requests={args.n_query}; "
         f"clients={clients}; ratio = service/orthanc"),
    ]  # fmt: skip
    print("\n" + "\n".join(header) + "\n")
    print(format_table(rows))
    print("\nnotes:\n" + "\n".join(f"  - {note}" for note in notes))

    failed = any(one.errors for one in [*warm_measures, *m.values()])
    out = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": info,
        "orthanc_version": orthanc.owner.version or None,
        "orthanc_dicomweb_plugin": plugin_version,
        "service_server": service.owner.server_desc,
        "config": {"n": n, "series_size": len(sops[0]), "n_query": args.n_query, "clients": clients, "workers": args.workers,
                   "threads": args.threads, "throttle": args.throttle, "files_per_patient": [len(s) for s in sops],
                   "patients": [*hb.PATIENTS, WARMUP_PATIENT], "name_patterns": NAME_PATTERNS, "bytes_total": total_bytes,
                   "warmup_files": args.warmup, "orthanc_config_extra": dicomweb_config,
                   "ratio": "service/orthanc; see 'better' per row", "percentiles": "linear interpolation between closest ranks"},
        "rows": rows,
        "skipped": {s.name: s.skipped for s in servers},
        "measurements": {f"{server}:{key}": one.stats() for (key, server), one in m.items()},
        "warmup": [one.stats() for one in warm_measures],
        "notes": notes,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }
    if failed:
        out["server_logs_tail"] = server_logs
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json} ({out['elapsed_s']:.0f}s total)")
    return 1 if failed else 0


def format_table(rows: list[dict]) -> str:
    """Rows as text columns: row, service, orthanc, ratio (service/orthanc), unit, better; n/a where not measured."""
    width = max(len(r["row"]) for r in rows)
    columns = [("row", width, "<"), ("service", 9, ">"), ("orthanc", 9, ">"), ("ratio", 7, ">"), ("unit", 7, "<"), ("better", 6, "<")]

    def cell(r: dict, name: str) -> str:
        v = r[name]
        if name in ("service", "orthanc"):
            return "n/a" if v is None else f"{v:.1f}"
        if name == "ratio":
            return "-" if v is None else f"{v:.2f}"
        return str(v)

    lines = [[name for name, _, _ in columns], ["-" * w for _, w, _ in columns]]
    lines += [[cell(r, name) for name, _, _ in columns] for r in rows]
    return "\n".join("  ".join(f"{text:{align}{w}}" for text, (_, w, align) in zip(line, columns)).rstrip() for line in lines)


if __name__ == "__main__":
    sys.exit(main())
