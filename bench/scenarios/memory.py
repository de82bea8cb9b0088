"""Memory: peak RSS of a gunicorn worker while uploading a ~1 GiB multi-frame file and rendering its frames.

    python -m bench run memory [--size-mib 1024] [--frame 1000] [--tmp-dir DIR]

Issue requirement: "Peak RSS of a worker while uploading a 1 GB multi-frame file and while rendering one of its
frames, reported; both bounded well below the file size."

1. The file is written to disk frame by frame, never held in memory (bench.workload.write_multiframe: 512x512,
   16 bits allocated, 12 stored, NumberOfFrames = ceil(size / 512 KiB)), then re-read with pydicom as a check.
2. The service under `gunicorn -c gunicorn.conf.py` (2 gthread workers), throwaway PostgreSQL database, media and
   upload staging in the same temp dir (storing can be a rename), throttles raised, GUNICORN_TIMEOUT=1800 and
   GUNICORN_MAX_REQUESTS=0 (no recycling mid-run). Warm-up: list requests, a small CT upload and renders.
3. Upload: the raw file as the body (application/dicom, Content-Length), sent from disk in 1 MiB chunks; expect
   201 and number_of_frames == frames. 4. Renders, cache-cold: /image/?frame=F, /thumbnail/, /thumbnail/?frame=F,
   /image/?frame=<last>.
Every --interval, each worker's VmRSS, RssAnon, RssFile, VmHWM, rchar, wchar from /proc. Before each phase the
kernel's peak counter is reset (clear_refs 5), so VmHWM at the end of a phase is the true peak within it. The
worker that served a request is the one whose rchar+wchar grew the most. Exit 1 if a request failed or a peak
exceeded --limit-ratio (default 0.25) of the file size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import shutil
import tempfile
import time
from typing import Self

from ..harness.httpclient import post_file_streamed, probe
from ..harness.measure import RssSampler, describe_machine, machine_info, reset_hwm
from ..harness.processes import children_of, log
from ..harness.report import write_result
from ..harness.stack import Stack, add_stack_arguments
from ..workload import MF_COLS, MF_FRAME_BYTES, MF_ROWS, Workload, make_ct_template, write_multiframe

MIB = 1024 * 1024
UPLOAD_CHUNK = MIB


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--size-mib", type=int, default=1024, help="file size to generate (MiB); default 1024")
    ap.add_argument("--frame", type=int, default=1000, help="frame to render (1-based); default 1000")
    ap.add_argument("--interval", type=float, default=0.05, help="RSS sampling interval, seconds (default 0.05)")
    ap.add_argument("--limit-ratio", type=float, default=0.25, help="fail if a worker's peak RSS exceeds this fraction of the file size")
    ap.add_argument("--tmp-dir", default=None, help="where the file and the media go (default: the system temp dir)")
    add_stack_arguments(ap, orthanc=False)


class Phase:
    """A window of time: resets each worker's VmHWM at the start, and reports per worker the peaks within it."""

    def __init__(self, sampler: RssSampler, name: str):
        self.sampler = sampler
        self.name = name

    def __enter__(self) -> Self:
        self.hwm_reset = {pid: reset_hwm(pid) for pid in self.sampler.pids()}
        self.before = self.sampler.snapshot()
        self.t_start = self.sampler.now()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(self.sampler.interval * 2)  # let the sampler see the tail
        self.t_end = self.sampler.now()
        self.after = self.sampler.snapshot()

    def report(self) -> dict:
        window = self.sampler.window(self.t_start, self.t_end)
        per_worker = {}
        for pid in sorted(set(self.before) | set(self.after) | {p for _, p, _ in window}):
            series = [m for _, p, m in window if p == pid]
            before, after = self.before.get(pid), self.after.get(pid)
            row = {
                "pid": pid, "samples": len(series),
                "rss_before_kib": before["VmRSS"] if before else None, "rss_after_kib": after["VmRSS"] if after else None,
                "max_sampled_rss_kib": max((m["VmRSS"] for m in series), default=None),
                "max_sampled_anon_kib": max((m.get("RssAnon", 0) for m in series), default=None),
                "max_sampled_file_kib": max((m.get("RssFile", 0) for m in series), default=None),
                "hwm_after_kib": after["VmHWM"] if after else None, "hwm_reset": self.hwm_reset.get(pid, False),
                "rchar_delta_bytes": (after["rchar"] - before["rchar"]) if before and after and "rchar" in after else None,
                "wchar_delta_bytes": (after["wchar"] - before["wchar"]) if before and after and "wchar" in after else None,
            }  # fmt: skip
            # Peak within the phase: VmHWM if it was reset at the start (exact), else the sampled maximum.
            candidates = [row["max_sampled_rss_kib"] or 0]
            if row["hwm_reset"] and row["hwm_after_kib"]:
                candidates.append(row["hwm_after_kib"])
            row["peak_kib"] = max(candidates)
            per_worker[pid] = row
        served = max(per_worker.values(), key=lambda r: (r["rchar_delta_bytes"] or 0) + (r["wchar_delta_bytes"] or 0), default=None)
        return {
            "phase": self.name, "seconds": round(self.t_end - self.t_start, 3),
            "served_by_pid": served["pid"] if served else None, "served_peak_kib": served["peak_kib"] if served else None,
            "served_rss_before_kib": served["rss_before_kib"] if served else None,
            "served_rchar_delta_bytes": served["rchar_delta_bytes"] if served else None,
            "served_wchar_delta_bytes": served["wchar_delta_bytes"] if served else None,
            "max_peak_kib_over_workers": max((r["peak_kib"] for r in per_worker.values()), default=None),
            "workers": list(per_worker.values()),
        }  # fmt: skip


def mib(kib: float | None) -> str:
    return f"{kib / 1024:8.1f}" if kib is not None else f"{'-':>8}"


def main(args: argparse.Namespace) -> int:
    frames = math.ceil(args.size_mib * MIB / MF_FRAME_BYTES)
    if frames * MF_FRAME_BYTES >= 2**32 - 2:
        raise SystemExit("--size-mib too large for an explicit-length Pixel Data element (< 4 GiB)")
    frame = min(max(args.frame, 1), frames)
    tmp_parent = args.tmp_dir or tempfile.gettempdir()
    need = 3 * frames * MF_FRAME_BYTES  # the file, the staged/stored copy, headroom
    free = shutil.disk_usage(tmp_parent).free
    if free < need:
        log(f"not enough free disk in {tmp_parent}: {free / MIB:.0f} MiB free, need ~{need / MIB:.0f} MiB")
        return 2
    info = machine_info()
    notes: list[str] = []
    failures: list[str] = []
    phases: list[dict] = []
    with Stack("memory", keep_tmp=args.keep_tmp, tmp_parent=tmp_parent) as stack:
        big = stack.tmp / "multiframe.dcm"
        log(f"writing {frames} frames of {MF_ROWS}x{MF_COLS} uint16 ({frames * MF_FRAME_BYTES / MIB:.0f} MiB pixel data) to {big}")
        t = time.perf_counter()
        file_info = write_multiframe(big, frames)
        file_info["write_s"] = round(time.perf_counter() - t, 1)
        file_info["client_peak_rss_kib_after_write"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        file_size = file_info["bytes"]
        log(f"wrote {file_size / MIB:.1f} MiB in {file_info['write_s']}s")

        env = {"GUNICORN_TIMEOUT": "1800", "GUNICORN_MAX_REQUESTS": "0"}
        if file_size > 2 * 1024**3:
            env["DICOM_MAX_UPLOAD_BYTES"] = str(file_size + MIB)
            notes.append(f"DICOM_MAX_UPLOAD_BYTES raised to {file_size + MIB} for this file size")
        service = stack.service(args, throttle=args.throttle, conf_file=True, env=env, username="membench")
        master = service.proc.pid
        deadline = time.monotonic() + 30
        while len(children_of(master)) < args.workers and time.monotonic() < deadline:
            time.sleep(0.1)

        # warm-up: imports (DRF, pydicom, numpy, Pillow) in whichever workers the requests reach
        with service.client() as c:
            small_id = service.upload(c, Workload(make_ct_template(), "memory warmup").copy_bytes())
        for i in range(6):  # new connections, so both workers likely get some
            probe(service.client, "/api/instances/")
            probe(service.client, f"/api/instances/{small_id}/image/?size={128 + i}")
            probe(service.client, f"/api/instances/{small_id}/thumbnail/?size={64 + i}")
        time.sleep(1.0)

        sampler = RssSampler(lambda: children_of(master), args.interval, keep_samples=True)
        baseline = sampler.snapshot()
        log("baseline RSS: " + ", ".join(f"pid {p} {m['VmRSS'] / 1024:.1f} MiB" for p, m in baseline.items()))
        sampler.start()
        try:
            log(f"uploading {file_size / MIB:.0f} MiB (raw body, {UPLOAD_CHUNK // 1024} KiB chunks)")
            headers = {**service.headers, "Content-Type": "application/dicom", "Content-Disposition": f'attachment; filename="{big.name}"'}
            with Phase(sampler, "upload") as ph:
                up = post_file_streamed(service.port, "/api/instances/", big, headers, UPLOAD_CHUNK)
            rep = ph.report()
            up_json: dict = {}
            with contextlib.suppress(ValueError):
                up_json = json.loads(up["body"])
            rep.update({"status": up["status"], "bytes_sent": up["bytes_sent"], "send_error": up["send_error"],
                        "send_s": round(up["send_s"], 2), "total_s": round(up["total_s"], 2),
                        "server_after_body_s": round(up["server_after_body_s"], 2),
                        "throughput_mib_s": round(up["bytes_sent"] / MIB / up["total_s"], 1),
                        "response": up_json or up["body"][:500].decode(errors="replace")})  # fmt: skip
            phases.append(rep)
            log(f"upload: HTTP {up['status']} in {up['total_s']:.1f}s ({rep['throughput_mib_s']} MiB/s); peak RSS {rep['served_peak_kib'] / 1024:.0f} MiB")
            instance_id = None
            if up["status"] != 201:
                failures.append(f"upload: HTTP {up['status']}: {up['body'][:300]!r}")
            else:
                instance_id = up_json.get("id")
                if up_json.get("number_of_frames") != frames:
                    failures.append(f"upload: number_of_frames {up_json.get('number_of_frames')} != {frames}")

            if instance_id:
                renders = [
                    (f"render frame {frame}", f"/api/instances/{instance_id}/image/?frame={frame}"),
                    ("thumbnail (frame 1)", f"/api/instances/{instance_id}/thumbnail/"),
                    (f"thumbnail frame {frame}", f"/api/instances/{instance_id}/thumbnail/?frame={frame}"),
                    (f"render last frame {frames}", f"/api/instances/{instance_id}/image/?frame={frames}"),
                ]
                bodies = {}
                for name, url in renders:
                    with Phase(sampler, name) as ph, service.client(timeout=1800) as c:
                        st, hdrs, body, secs = c.request("GET", url)
                    rep = ph.report()
                    rep.update({"url": url.replace(instance_id, "{id}"), "status": st, "seconds": round(secs, 3),
                                "content_type": hdrs.get("content-type"), "response_bytes": len(body)})  # fmt: skip
                    if st != 200:
                        rep["response"] = body[:500].decode(errors="replace")
                        failures.append(f"{name}: HTTP {st}: {body[:300]!r}")
                    bodies[name] = body
                    phases.append(rep)
                    log(f"{name}: HTTP {st} in {secs:.2f}s, {len(body)} bytes; peak RSS {rep['served_peak_kib'] / 1024:.0f} MiB, "
                        f"worker read {(rep['served_rchar_delta_bytes'] or 0) / MIB:.1f} MiB")  # fmt: skip
                # The frames differ (gradient shifted by the frame number): identical images would mean the frame was ignored.
                st, _, first = probe(service.client, f"/api/instances/{instance_id}/image/?frame=1")
                if st == 200 and frame != 1 and first == bodies.get(f"render frame {frame}"):
                    failures.append(f"frame {frame} rendered identical to frame 1: ?frame= ignored?")
                if bodies.get("thumbnail (frame 1)") and bodies.get("thumbnail (frame 1)") == bodies.get(f"thumbnail frame {frame}"):
                    notes.append(f"thumbnail ?frame={frame} identical to the default thumbnail (frame 1): ?frame= ignored by /thumbnail/?")
            if not service.proc.alive():
                failures.append(f"gunicorn master died (code {service.proc.popen.returncode})")
        finally:
            sampler.stop()

    # ---------------- report
    base_by_pid = {pid: m["VmRSS"] for pid, m in baseline.items()}
    file_kib = file_size / 1024
    hwm_exact = all(w["hwm_reset"] for p in phases for w in p["workers"])
    print(f"\n{describe_machine(info)}\nmemory: {frames} frames {MF_ROWS}x{MF_COLS} uint16, file {file_size / MIB:.1f} MiB; {service.desc}; "
          f"PostgreSQL; RSS sampled every {args.interval * 1000:.0f} ms"
          f"{' + VmHWM reset per phase' if hwm_exact else ' (VmHWM not resettable: peaks are sampled maxima)'}")  # fmt: skip
    print("baseline RSS per worker (MiB, warm): " + ", ".join(f"{p}: {k / 1024:.1f}" for p, k in base_by_pid.items()) + "\n")
    hdr = (f"{'phase':<24} {'HTTP':>4} {'secs':>7} {'pid':>8} {'base MiB':>8} {'peak MiB':>8} {'+MiB':>8} {'anon MiB':>8} "
           f"{'file MiB':>8} {'peak/file':>9} {'+/file':>7} {'read MiB':>9} {'wrote MiB':>9}")  # fmt: skip
    print(hdr + "\n" + "-" * len(hdr))
    for p in phases:
        w = next((x for x in p["workers"] if x["pid"] == p["served_by_pid"]), None)
        base = base_by_pid.get(p["served_by_pid"]) or (w and w["rss_before_kib"])
        peak = p["served_peak_kib"]
        growth = (peak - base) if peak and base else None
        p.update(served_baseline_kib=base, served_growth_kib=growth, peak_over_file=round(peak / file_kib, 4) if peak else None,
                 growth_over_file=round(growth / file_kib, 4) if growth is not None else None)  # fmt: skip
        gof = f"{p['growth_over_file']:.3f}" if p["growth_over_file"] is not None else "-"
        print(f"{p['phase']:<24} {p['status']:>4} {p.get('total_s', p.get('seconds')):>7.2f} {p['served_by_pid']:>8} {mib(base)} {mib(peak)} "
              f"{mib(growth)} {mib(w and w['max_sampled_anon_kib'])} {mib(w and w['max_sampled_file_kib'])} {p['peak_over_file'] or 0:>9.3f} "
              f"{gof:>7} {(p['served_rchar_delta_bytes'] or 0) / MIB:>9.1f} {(p['served_wchar_delta_bytes'] or 0) / MIB:>9.1f}")  # fmt: skip
        if p["max_peak_kib_over_workers"] and peak and p["max_peak_kib_over_workers"] > peak:
            notes.append(f"{p['phase']}: another worker peaked higher ({p['max_peak_kib_over_workers'] / 1024:.0f} MiB)")
    up = next((p for p in phases if p["phase"] == "upload"), None)
    if up:
        print(f"\nupload: {up['bytes_sent'] / MIB:.0f} MiB in {up['total_s']:.1f}s = {up['throughput_mib_s']} MiB/s "
              f"(body sent in {up['send_s']:.1f}s, response {up['server_after_body_s']:.1f}s after the last byte)")  # fmt: skip
    print(f"client peak RSS (this process, since it started): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    limit_kib = args.limit_ratio * file_kib
    for p in phases:
        if (p["max_peak_kib_over_workers"] or 0) > limit_kib:
            failures.append(f"{p['phase']}: peak RSS {p['max_peak_kib_over_workers'] / 1024:.0f} MiB > {args.limit_ratio:.0%} of the file "
                            f"({limit_kib / 1024:.0f} MiB)")  # fmt: skip
        if p["phase"] != "upload" and (p["served_rchar_delta_bytes"] or 0) > file_size / 4:
            notes.append(f"{p['phase']}: the worker read {p['served_rchar_delta_bytes'] / MIB:.0f} MiB for one frame "
                         f"({MF_FRAME_BYTES // 1024} KiB): the render path reads (most of) the file")  # fmt: skip
    for n in notes:
        print(f"note: {n}")
    for f in failures:
        print(f"FAIL: {f}")

    size_mib = file_size / MIB
    rows = [{"row": f"worker peak RSS, {p['phase']} (ratio: to the {size_mib:.0f} MiB file)",
             "service": round(p["max_peak_kib_over_workers"] / 1024, 1) if p["max_peak_kib_over_workers"] else None, "orthanc": None,
             "ratio": round(p["max_peak_kib_over_workers"] / 1024 / size_mib, 3) if p["max_peak_kib_over_workers"] else None,
             "unit": "MiB", "better": "lower"} for p in phases]  # fmt: skip
    write_result(
        args.json, rows, info=info,
        config={"size_mib": args.size_mib, "frames": frames, "frame": frame, "workers": args.workers, "interval_s": args.interval,
                "limit_ratio": args.limit_ratio, "upload_chunk_bytes": UPLOAD_CHUNK, "hwm_reset_per_phase": hwm_exact,
                "database": "PostgreSQL (throwaway)"},
        service_server=service.desc, file=file_info, baseline_rss_kib=base_by_pid, baseline_rss_max_kib=max(base_by_pid.values(), default=None),
        phases=phases, client_peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, notes=notes, failures=failures,
        **({"server_log_tail": stack.log_tails()} if failures else {}),
    )  # fmt: skip
    return 1 if failures else 0
