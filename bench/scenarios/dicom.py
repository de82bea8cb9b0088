"""The DICOM node against Orthanc's DICOM server: C-STORE ingest, C-FIND latency and C-GET of a series.

    python -m bench run dicom [--n 200] [--finds 100] [--repeat 3]

1. Workload (bench.workload, the 512x512 CT): one series of --n slices; the same bytes go to both servers.
2. The service: `manage.py dicomserver` (one process, pynetdicom's threads) on a throwaway PostgreSQL database,
   the bench SCU a known peer (`manage.py dicom_peer add`) allowed store, find and get. Orthanc 1.10 with its
   DICOM server on (any calling AE may store, find and get), storage uncompressed.
3. C-STORE: dcmtk's `storescu` sends the --n files on one association; files/s = n / the command's wall time.
4. C-FIND: pynetdicom, one association, --finds study-level queries (PatientName=Bench*, five return keys, one
   match); p50 and p95 of each request's round trip.
5. C-GET: pynetdicom, a new association per retrieve, the whole series (--n instances) sent back as C-STORE
   sub-operations; instances/s = n / the retrieve's wall time, median of --repeat.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom adds its SOP classes at import time
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from .. import ROOT
from ..harness.measure import Stopwatch, describe_machine, describe_packages, describe_repo, machine_info, percentile
from ..harness.processes import PYTHON, free_port, log
from ..harness.report import comparison, print_report, write_result
from ..harness.stack import Stack, add_stack_arguments
from ..workload import CT_SIZE, Workload, make_ct_template

SCU = "BENCHSCU"
NODE = "DICOMSITE"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=200, help="CT slices in the series (default 200)")
    ap.add_argument("--finds", type=int, default=100, help="C-FIND requests per server (default 100)")
    ap.add_argument("--repeat", type=int, default=3, help="C-GET retrieves of the series per server (default 3)")
    ap.add_argument("--storescu", default=shutil.which("storescu") or "/usr/bin/storescu", help="dcmtk's storescu")
    add_stack_arguments(ap, gunicorn=False)


def series_files(folder: Path, n: int) -> tuple[str, list[Path]]:
    load = Workload(make_ct_template(), "dicom", patient=("Bench^DicomNode", "BENCH-D1"), numbered=True)
    folder.mkdir(parents=True)
    paths = []
    for index in range(n):
        path = folder / f"{index:05d}.dcm"
        path.write_bytes(load.copy_bytes())
        paths.append(path)
    return load.study, paths


def store(storescu: str, port: int, ae_title: str, files: list[Path]) -> float:
    """storescu of every file on one association: files/s."""
    started = time.perf_counter()
    done = subprocess.run([storescu, "-aet", SCU, "-aec", ae_title, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"storescu to {ae_title} failed: {done.stderr[-500:]}")
    return len(files) / wall


def finds(port: int, ae_title: str, count: int, study: str) -> list[float]:
    """Round trips (ms) of `count` study-level C-FINDs on one association; each must find the study."""
    ae = AE(ae_title=SCU)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise RuntimeError(f"C-FIND association to {ae_title} refused")
    no_delay(assoc)
    times = []
    try:
        for _ in range(count):
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.PatientName = "Bench*"
            for keyword in ("StudyInstanceUID", "StudyDate", "PatientID", "StudyDescription", "NumberOfStudyRelatedInstances"):
                setattr(identifier, keyword, "")
            started = time.perf_counter()
            found = [answer.StudyInstanceUID for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
                     if status.Status == 0xFF00]  # fmt: skip
            times.append((time.perf_counter() - started) * 1000)
            if found != [study]:
                raise RuntimeError(f"C-FIND on {ae_title} found {found}, not the bench study")
    finally:
        assoc.release()
    return times


def get_series(port: int, ae_title: str, study: str, n: int) -> float:
    """One C-GET of the study's series, every instance back as a C-STORE sub-operation: instances/s."""
    received = []
    ae = AE(ae_title=SCU)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    handlers = [(evt.EVT_C_STORE, lambda event: received.append(event.request.AffectedSOPInstanceUID) or 0x0000)]
    started = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, ext_neg=[build_role(CTImageStorage, scp_role=True)], evt_handlers=handlers)
    if not assoc.is_established:
        raise RuntimeError(f"C-GET association to {ae_title} refused")
    no_delay(assoc)
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study
        statuses = [status.Status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    wall = time.perf_counter() - started
    if len(received) != n or statuses[-1] != 0x0000:
        raise RuntimeError(f"C-GET from {ae_title}: {len(received)} of {n} instances, final status 0x{statuses[-1]:04X}")
    return n / wall


def main(args: argparse.Namespace) -> int:
    clock = Stopwatch()
    info = machine_info()
    results: dict[str, dict[str, float]] = {}
    with Stack("dicom", keep_tmp=args.keep_tmp) as stack:
        notes = stack.notes
        log(f"generating {args.n} CT slices ({CT_SIZE}x{CT_SIZE})")
        study, files = series_files(stack.tmp / "series", args.n)
        django = stack.django(stack.database(args.postgres))
        django.user_token("bench")
        django.manage("dicom_peer", "add", SCU, "--host", "127.0.0.1", "--port", "104", "--owner", "bench", "--allow", "store,find,get")
        node_port = free_port()
        node = stack._process("dicomserver", [PYTHON, "manage.py", "dicomserver", "--port", str(node_port), "--ae-title", NODE,
                                              "--host", "127.0.0.1"], env=django.env, cwd=ROOT)  # fmt: skip
        wait_listening(node, node_port)
        servers = [("service", node_port, NODE)]
        orthanc = None
        if not args.no_orthanc:
            orthanc_port = free_port()
            orthanc = stack.orthanc(args.orthanc_bin, port=args.orthanc_port, config={
                "DicomServerEnabled": True, "DicomPort": orthanc_port, "DicomAet": "ORTHANC", "DicomCheckCalledAet": False,
                "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True,
            })  # fmt: skip
            servers.append(("orthanc", orthanc_port, "ORTHANC"))
        for name, port, ae_title in servers:
            log(f"{name}: C-STORE of {args.n} files on one association (storescu)")
            results[name] = {"store": store(args.storescu, port, ae_title, files)}
            log(f"{name}: {args.finds} C-FINDs")
            finds(port, ae_title, 5, study)  # warm-up
            times = finds(port, ae_title, args.finds, study)
            results[name] |= {"find_p50": statistics.median(times), "find_p95": percentile(times, 0.95)}
            log(f"{name}: {args.repeat} C-GETs of the series")
            results[name]["get"] = statistics.median(get_series(port, ae_title, study, args.n) for _ in range(args.repeat))

    def cell(name: str, key: str) -> float | None:
        return results.get(name, {}).get(key)

    rows = [
        comparison(f"C-STORE ingest, storescu one association ({args.n} files)", cell("service", "store"), cell("orthanc", "store"), "files/s", "higher"),
        comparison("C-FIND study query p50 (one association)", cell("service", "find_p50"), cell("orthanc", "find_p50"), "ms"),
        comparison("C-FIND study query p95", cell("service", "find_p95"), cell("orthanc", "find_p95"), "ms"),
        comparison(f"C-GET of a {args.n}-instance series (median of {args.repeat})", cell("service", "get"), cell("orthanc", "get"),
                   "instances/s", "higher"),  # fmt: skip
    ]
    header = [
        describe_machine(info),
        describe_packages(info, "Django", "pynetdicom", "pydicom", "psycopg") + f"; {orthanc.desc if orthanc else 'Orthanc n/a'}",
        f"service: manage.py dicomserver (pynetdicom), {django.database.desc}; {describe_repo(info)}",
        f"workload: one series of {args.n} CT slices {CT_SIZE}x{CT_SIZE} 16-bit, Explicit VR Little Endian; ratio = service/orthanc",
    ]
    print_report(header, rows, notes)
    write_result(args.json, rows, info=info, config={"n": args.n, "finds": args.finds, "repeat": args.repeat},
                 measurements=results, notes=notes, elapsed_s=round(clock.elapsed, 1))  # fmt: skip
    return 0


def no_delay(assoc) -> None:
    """TCP_NODELAY on the SCU's socket: pynetdicom sends a request in small writes, and Nagle's algorithm with the
    server's delayed ACK would add ~40 ms to every round trip of either server."""
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def wait_listening(proc, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{proc.name} is not listening on {port} after {timeout:.0f} s")
