"""DICOMweb: the same STOW-RS, QIDO-RS and WADO-RS requests against the service and Orthanc's DICOMweb plugin.

    python -m bench run dicomweb [--n 200] [--clients 4]

1. Workload (bench.workload, the 512x512 CT): --n files with fresh SOP Instance UIDs, the first --series-size
   (default min(100, n - 2); at most 100, the service's default QIDO limit) for Smith^John / BENCH-P1, the others
   alternating between Garcia^Maria / BENCH-P2 and Nakamura^Ken / BENCH-P3, one study and series per patient.
   The same bytes go to both servers. --warmup Warmup^Bench files are stored first and every read below is run
   on them a few times before anything is timed.
2. The service under gunicorn (throttles raised), DICOMweb under /dicomweb/, token auth; Orthanc with the Debian
   DICOMweb plugin (--orthanc-plugin) under /dicom-web/, plugin options at their defaults (so "SeriesMetadata":
   "Full": metadata is read from the stored files).
3. Measurements (--clients threads, kept-alive connections; every reply is checked, a failed one is counted):
   - STOW-RS `POST /studies`, one instance per request; the reply must reference that SOP and list no failure;
   - QIDO-RS studies `?PatientName=<pattern>&includefield=00081030,00080060&limit=101` (OHIF's study list),
     cycling over *smith*, *a*, Naka*; the study UIDs returned must be the matching ones, on both servers;
   - QIDO-RS series of a study, instances of the large series, WADO-RS metadata of the large series (UIDs checked);
   - WADO-RS frame 1 of every instance: the one part must equal the file's Pixel Data;
   - viewer load: the same frame requests with 6 in flight (a browser's connections per host), the wall time of all;
   - WADO-RS rendered of every instance (image/jpeg, 512x512), then with `?window=40,400,linear` (the file's own
     window, asked for explicitly: Orthanc's plugin does not apply it by default); a server answering
     400/404/405/406/415/501 on the warm-up instance gets n/a with a note;
   - WADO-RS instance retrieve of every instance: the one part must be the stored file, byte for byte (SHA-256).
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote

from ..harness.httpclient import HttpClient, image_info, probe
from ..harness.measure import Check, Measure, Req, Stopwatch, describe_machine, describe_packages, describe_repo, machine_info, run_requests
from ..harness.processes import log
from ..harness.report import comparison, print_report, write_result
from ..harness.stack import DEFAULT_DICOMWEB_PLUGIN, Server, Stack, add_stack_arguments
from ..workload import CT_SIZE, PATIENTS, WARMUP_PATIENT, Workload, make_ct_template

NAME_PATTERNS = ["*smith*", "*a*", "Naka*"]  # OHIF sends the typed text between asterisks
JSON_ACCEPT = {"Accept": "application/dicom+json"}
FRAME_ACCEPT = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
RENDERED_ACCEPT = {"Accept": "image/jpeg"}
DICOM_ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
UNSUPPORTED = (400, 404, 405, 406, 415, 501)  # what a server that lacks a resource answers
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
PREAMBLE_LENGTH = 128
WINDOW_QUERY = "window=40,400,linear"  # the template's WindowCenter/WindowWidth, asked for explicitly
STUDY_FIELDS = "includefield=00081030,00080060&limit=101"
VIEWER_CLIENTS = 6  # a browser's parallel connections to one host


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=200, help="files stored in each server, and per-instance reads; default 200")
    ap.add_argument("--series-size", type=int, default=None, help="instances in the large series (<= 100); default min(100, n - 2)")
    ap.add_argument("--n-query", type=int, default=None, help="requests per QIDO / metadata measurement (default: --n)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (threads, kept-alive connections); default 4")
    ap.add_argument("--warmup", type=int, default=8, help="Warmup^Bench files stored (and read) per server before timing")
    ap.add_argument("--orthanc-plugin", default=DEFAULT_DICOMWEB_PLUGIN, help="Orthanc's DICOMweb plugin (Debian orthanc-dicomweb)")
    add_stack_arguments(ap)


@dataclass
class Side:
    """One side of the comparison: the server and its DICOMweb root, and what it does not support."""

    name: str
    server: Server
    root: str
    skipped: dict[str, str] = field(default_factory=dict)  # measurement -> why it was not run

    def client(self) -> HttpClient:
        return self.server.client()

    def path(self, *parts: str, query: str = "") -> str:
        return "/".join([self.root, *parts]) + (f"?{query}" if query else "")


# --------------------------------------------------------------------------- request bodies and replies


def stow_body(content: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "dicomweb-bench-" + secrets.token_hex(12)
    body = b"".join([f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), content, f"\r\n--{boundary}--\r\n".encode()])
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}', **JSON_ACCEPT}


def multipart_payloads(body: bytes) -> list[bytes]:
    """The parts of a multipart body whose first line is its delimiter; the close delimiter must be there."""
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


def check_stow(sop: str) -> Check:
    def check(status: int, data: bytes) -> str | None:
        reply = json.loads(data)
        stored = [values(ref, "00081155") for ref in values(reply, "00081199")]
        failed = values(reply, "00081198")
        return None if stored == [[sop]] and not failed else f"stored {stored}, failed {failed}"

    return check


def check_uids(tag: str, expected: set[str]) -> Check:
    """A DICOM JSON array holding exactly one data set per expected UID."""

    def check(status: int, data: bytes) -> str | None:
        got = [(values(item, tag) or [None])[0] for item in json.loads(data)]
        if len(got) == len(expected) and set(got) == expected:
            return None
        return f"expected {len(expected)} {tag} values, got {len(got)} ({len(set(got) & expected)} of the expected)"

    return check


def check_single_part(expected: dict[str, str], seen: list[str]) -> Check:
    """One part whose SHA-256 is a key of `expected` (hash -> what that content is); appends what it was to `seen`."""

    def check(status: int, data: bytes) -> str | None:
        parts = multipart_payloads(data)
        if len(parts) != 1:
            return f"{len(parts)} parts, expected 1"
        what = expected.get(hashlib.sha256(parts[0]).hexdigest())
        seen.append(what or "other")
        return None if what else f"the part ({len(parts[0])} bytes) is none of: {', '.join(expected.values())}"

    return check


def check_jpeg(size: int, seen: list[str]) -> Check:
    """A size x size JPEG; appends its SHA-256 to `seen` (every copy has the same pixels: one image is expected)."""

    def check(status: int, data: bytes) -> str | None:
        got = image_info(data)
        if (got.get("format"), got.get("width"), got.get("height")) != ("jpeg", size, size):
            return f"expected a {size}x{size} JPEG, got {got}"
        seen.append(hashlib.sha256(data).hexdigest())
        return None

    return check


# --------------------------------------------------------------------------- the scenario


def main(args: argparse.Namespace) -> int:
    n, clients = args.n, max(1, args.clients)
    series_size = args.series_size if args.series_size is not None else min(100, n - 2)
    n_query = n if args.n_query is None else args.n_query
    if not 1 <= series_size <= 100 or n < series_size + 2:
        raise SystemExit("--series-size must be 1..100 and --n at least --series-size + 2 (one file for each other patient)")
    clock = Stopwatch()
    info = machine_info()

    log(f"generating {n} + {args.warmup} CT files ({CT_SIZE}x{CT_SIZE})")
    template = make_ct_template()
    pixel_sha = {hashlib.sha256(template.PixelData).hexdigest(): "the file's Pixel Data"}
    seen: dict[tuple[str, str], list[str]] = collections.defaultdict(list)  # (measurement, server) -> what each part was
    jpegs: dict[tuple[str, str], list[str]] = collections.defaultdict(list)  # (measurement, server) -> SHA-256 of each JPEG
    loads = [Workload(template, f"dicomweb {pid}", patient=(name, pid)) for name, pid in PATIENTS]
    warm = Workload(template, "dicomweb warmup", patient=WARMUP_PATIENT)
    owners = [0 if i < series_size else 1 + (i - series_size) % 2 for i in range(n)]
    files: list[tuple[str, bytes]] = []  # (SOP Instance UID, file), in sending order
    sops: list[list[str]] = [[] for _ in loads]  # per patient (= study = series)
    for k in owners:
        files.append(loads[k].copy())
        sops[k].append(files[-1][0])
    warm_files = [warm.copy() for _ in range(args.warmup)]
    all_sops = [sop for sop, _ in files]  # files is emptied after STOW
    # The service stores files with the 128-byte preamble zeroed (PS3.10 7.5; README): either is "the stored file".
    file_sha = {sop: {hashlib.sha256(content).hexdigest(): "the file as sent",
                      hashlib.sha256(bytes(PREAMBLE_LENGTH) + content[PREAMBLE_LENGTH:]).hexdigest(): "the file with its preamble zeroed"}
                for sop, content in files}  # fmt: skip
    location = {sop: (loads[k].study, loads[k].series) for k, per in enumerate(sops) for sop in per}
    total_bytes = sum(len(content) for _, content in files)
    study_of_name = {name: load.study for (name, _), load in zip([*PATIENTS, WARMUP_PATIENT], [*loads, warm])}
    log(f"workload: {n} files, {total_bytes / 1e6:.1f} MB, per patient {[len(s) for s in sops]}")

    def instance_path(side: Side, sop: str, *rest: str) -> str:
        study, series = location[sop]
        return side.path("studies", study, "series", series, "instances", sop, *rest)

    def matching_studies(pattern: str) -> set[str]:
        return {uid for name, uid in study_of_name.items() if fnmatch.fnmatchcase(name.lower(), pattern.lower())}

    def study_search(side: Side, pattern: str) -> Req:
        query = f"PatientName={quote(pattern, safe='*^')}&{STUDY_FIELDS}"
        return Req("GET", side.path("studies", query=query), headers=JSON_ACCEPT, check=check_uids(STUDY_UID, matching_studies(pattern)))

    # The measurements: key -> (label, unit of the throughput row, requests for a side).
    big = loads[0]
    plan = {
        "stow": ("STOW-RS store, 1 instance/request", "files/s",
                 lambda s: [Req("POST", s.path("studies"), *stow_body(content), check_stow(sop)) for sop, content in files]),
        "qido_studies": ("QIDO-RS studies PatientName=*x* +includefield", "req/s",
                         lambda s: [study_search(s, NAME_PATTERNS[i % len(NAME_PATTERNS)]) for i in range(n_query)]),
        "qido_series": ("QIDO-RS series of a study", "req/s",
                        lambda s: [Req("GET", s.path("studies", loads[i % len(loads)].study, "series"), headers=JSON_ACCEPT,
                                       check=check_uids(SERIES_UID, {loads[i % len(loads)].series})) for i in range(n_query)]),
        "qido_instances": (f"QIDO-RS instances of a series ({len(sops[0])})", "req/s",
                           lambda s: [Req("GET", s.path("studies", big.study, "series", big.series, "instances"), headers=JSON_ACCEPT,
                                          check=check_uids(SOP_UID, set(sops[0])))] * n_query),
        "metadata": (f"WADO-RS series metadata ({len(sops[0])} instances)", "req/s",
                     lambda s: [Req("GET", s.path("studies", big.study, "series", big.series, "metadata"), headers=JSON_ACCEPT,
                                    check=check_uids(SOP_UID, set(sops[0])))] * n_query),
        "frame": ("WADO-RS frame 1, octet-stream transfer-syntax=*", "req/s",
                  lambda s: [Req("GET", instance_path(s, sop, "frames", "1"), headers=FRAME_ACCEPT,
                                 check=check_single_part(pixel_sha, seen["frame", s.name])) for sop in all_sops]),
        # What a viewer opening a stack does: every slice's frame, VIEWER_CLIENTS requests in flight (a browser's
        # connections per host); timed as the wall time of the whole stack.
        "viewer": (f"viewer load: frame 1 of all {n} instances, {VIEWER_CLIENTS} parallel requests, wall time", "req/s",
                   lambda s: [Req("GET", instance_path(s, sop, "frames", "1"), headers=FRAME_ACCEPT,
                                  check=check_single_part(pixel_sha, seen["viewer", s.name])) for sop in all_sops]),
        "rendered": ("WADO-RS rendered instance, image/jpeg", "req/s",
                     lambda s: [Req("GET", instance_path(s, sop, "rendered"), headers=RENDERED_ACCEPT,
                                    check=check_jpeg(CT_SIZE, jpegs["rendered", s.name])) for sop in all_sops]),
        "rendered_window": (f"WADO-RS rendered ?{WINDOW_QUERY}", "req/s",
                            lambda s: [Req("GET", instance_path(s, sop, "rendered") + "?" + WINDOW_QUERY, headers=RENDERED_ACCEPT,
                                           check=check_jpeg(CT_SIZE, jpegs["rendered_window", s.name])) for sop in all_sops]),
        "retrieve": ("WADO-RS retrieve instance, transfer-syntax=*", "req/s",
                     lambda s: [Req("GET", instance_path(s, sop), headers=DICOM_ACCEPT, check=check_single_part(file_sha[sop], seen["retrieve", s.name]))
                                for sop in all_sops]),
    }  # fmt: skip
    m: dict[tuple[str, str], Measure] = {}
    warm_measures: list[Measure] = []
    plugin_version = None
    dicomweb_config = {"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with Stack("dicomweb", keep_tmp=args.keep_tmp) as stack:
        notes = stack.notes
        service = stack.service(args, throttle=args.throttle)
        orthanc = stack.optional_orthanc(args, plugins=[args.orthanc_plugin], config=dicomweb_config)
        sides = [Side("service", service, "/dicomweb"), *([Side("orthanc", orthanc, "/dicom-web")] if orthanc else [])]
        if orthanc:
            status, _, data = probe(orthanc.client, "/plugins/dicom-web")
            plugin_version = json.loads(data).get("Version") if status == 200 else f"? (GET /plugins/dicom-web: HTTP {status})"

        # warm-up: store the Warmup^Bench files, then every read a few times, not timed
        for s in sides:
            reqs = [Req("POST", s.path("studies"), *stow_body(content), check_stow(sop)) for sop, content in warm_files]
            warm_measures.append(run_requests(Measure("warmup stow", s.name), s.client, reqs, 1, ok_statuses=(200,)))
            series_path = s.path("studies", warm.study, "series", warm.series)
            status, _, data = probe(s.client, f"{series_path}/instances/{warm_files[0][0]}/rendered", RENDERED_ACCEPT)
            if status in UNSUPPORTED:
                why = f"HTTP {status} to .../instances/{{sop}}/rendered on the warm-up instance: {data[:150]!r}"
                s.skipped.update(rendered=why, rendered_window=why)
            reads = [Req("GET", s.path("studies", query=f"PatientName=Warmup*&{STUDY_FIELDS}"), headers=JSON_ACCEPT),
                     Req("GET", s.path("studies", warm.study, "series"), headers=JSON_ACCEPT),
                     Req("GET", f"{series_path}/instances", headers=JSON_ACCEPT),
                     Req("GET", f"{series_path}/metadata", headers=JSON_ACCEPT),
                     *[Req("GET", f"{series_path}/instances/{sop}/frames/1", headers=FRAME_ACCEPT) for sop, _ in warm_files],
                     *[Req("GET", f"{series_path}/instances/{sop}", headers=DICOM_ACCEPT) for sop, _ in warm_files]]  # fmt: skip
            if "rendered" not in s.skipped:
                reads += [Req("GET", f"{series_path}/instances/{sop}/rendered", headers=RENDERED_ACCEPT) for sop, _ in warm_files]
            warm_measures.append(run_requests(Measure("warmup reads", s.name), s.client, reads * (2 * args.workers + 2), clients, ok_statuses=(200,)))
        log(f"servers warm ({clock.elapsed:.0f}s since start)")

        # measured, one request kind at a time, service then Orthanc
        for key, (label, _, make_reqs) in plan.items():
            for s in sides:
                if key in s.skipped:
                    continue
                reqs = make_reqs(s)
                log(f"{key}: {s.name} x{len(reqs)}, {clients} clients")
                m[key, s.name] = run_requests(Measure(key, s.name, f"{reqs[0].method} {reqs[0].path[:160]}"), s.client, reqs,
                                              VIEWER_CLIENTS if key == "viewer" else clients,
                                              ok_statuses=(200,))  # fmt: skip
            if key == "stow":
                del files[:]  # ~0.5 MB each; UIDs and hashes are kept
        log(f"measured ({clock.elapsed:.0f}s since start)")

    # ---------------- report
    rows = []
    for key, (label, rate_unit, _) in plan.items():
        stats = (("wall", "ms", "lower"),) if key == "viewer" else (("p50", "ms", "lower"), ("p95", "ms", "lower"), ("rate", rate_unit, "higher"))
        for stat, unit, better in stats:
            cell = {}
            for name in ("service", "orthanc"):
                one = m.get((key, name))
                if one is None:
                    cell[name] = None
                elif stat in ("rate", "wall"):
                    cell[name] = one.rate if stat == "rate" else one.wall_s * 1000
                else:
                    cell[name] = one.p(0.5 if stat == "p50" else 0.95)
            suffix = {"rate": " throughput", "wall": ""}.get(stat, f" {stat}")
            rows.append(comparison(f"{label}{suffix}", cell["service"], cell["orthanc"], unit, better))

    for s in sides:
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
        got = {s.name: set(jpegs.get((key, s.name), [])) for s in sides}
        if len(got) == 2 and all(got.values()):
            same = got["service"] == got["orthanc"] and len(got["service"]) == 1
            notes.append(f"{plan[key][0]}: the two servers' JPEGs were {'identical' if same else 'different'} "
                         f"({len(got['service'])} distinct from the service, {len(got['orthanc'])} from Orthanc)"
                         + ("" if same or key != "rendered" else "; without window= Orthanc's plugin does not apply the file's "
                            "WindowCenter/Width 40/400 (the service does), so that row compares different images"))  # fmt: skip
    mean_bytes = {f"{k[1]} {k[0]}": v.mean_response_bytes for k, v in m.items()}
    notes.append("mean response bytes: " + ", ".join(f"{k} {v}" for k, v in mean_bytes.items() if not k.endswith("stow")))
    notes.append(f"files per patient {[len(s) for s in sops]} (one study and one series each); QIDO study searches cycle "
                 f"over {NAME_PATTERNS}, matching {[len(matching_studies(p)) for p in NAME_PATTERNS]} studies (incl. the warm-up one)")  # fmt: skip
    notes.append("Orthanc's plugin runs with its defaults: series metadata 'Full' reads every DICOM file of the series per request "
                 "(and instance-level QIDO probably reads the files too for its default attributes outside Orthanc's index, such as "
                 "Rows/Columns); the service answers both from the database (columns and the stored header JSON)")  # fmt: skip

    header = [
        describe_machine(info),
        describe_packages(info, "Django", "gunicorn", "psycopg", "pydicom")
        + f"; {orthanc.desc if orthanc else 'Orthanc n/a'} + DICOMweb plugin {plugin_version or 'n/a'}",
        f"service: {service.desc}, {service.django.database.desc}, token auth, throttles {args.throttle}; {describe_repo(info)}",
        (f"workload: n={n} CT {CT_SIZE}x{CT_SIZE} 16-bit files, {total_bytes / 1e6:.1f} MB; QIDO/metadata requests={n_query}; "
        f"clients={clients}; ratio = service/orthanc"),
    ]
    print_report(header, rows, notes)
    failed = any(one.errors for one in [*warm_measures, *m.values()])
    write_result(
        args.json, rows, info=info, orthanc_version=orthanc.version if orthanc else None, orthanc_dicomweb_plugin=plugin_version,
        service_server=service.desc,
        config={"n": n, "series_size": len(sops[0]), "n_query": n_query, "clients": clients, "workers": args.workers,
                "threads": args.threads, "throttle": args.throttle, "files_per_patient": [len(s) for s in sops],
                "patients": [*PATIENTS, WARMUP_PATIENT], "name_patterns": NAME_PATTERNS, "bytes_total": total_bytes,
                "warmup_files": args.warmup, "orthanc_config_extra": dicomweb_config,
                "ratio": "service/orthanc; see 'better' per row", "percentiles": "linear interpolation between closest ranks"},
        skipped={s.name: s.skipped for s in sides}, measurements={f"{server}:{key}": one.stats() for (key, server), one in m.items()},
        warmup=[one.stats() for one in warm_measures], notes=notes, elapsed_s=round(clock.elapsed, 1),
        **({"server_logs_tail": stack.log_tails()} if failed else {}),
    )  # fmt: skip
    return 1 if failed else 0
