"""Render: the service's image and thumbnail endpoints against Orthanc's /preview and /rendered.

    python -m bench run render [--n 50] [--n-cr 5] [--clients 1] [--redis] [--samples DIR]

1. Workload (bench.workload; fresh Study/Series per set, fresh SOP per copy, so every copy has its own cache key
   on both servers): the 512x512 16-bit CT (WC/WW 40/400), and pydicom-data's 1955x1841 MONOCHROME1 CR as JPEG 2000
   lossless (RG1_J2KR.dcm) and, so that Orthanc has something it can decode, uncompressed (RG1_UNCR.dcm).
2. The service under gunicorn (2 workers x 4 threads), DEBUG off, throwaway PostgreSQL database (SQLite in the temp
   dir if PostgreSQL is unreachable), token auth; --redis: a throwaway redis-server as the shared render cache.
   Orthanc with a temp config, no plugins.
3. Each server's processes are warmed on throwaway instances first: "cold" means cache-cold, not process-cold.
4. Timings (one client by default), wall time to the last byte of the body, kept-alive connections:
   - cold: the first request for each of N distinct copies; warm: N repeats of one URL after it was requested
     (plus priming, since the default cache is per worker process); with an ETag also N If-None-Match requests;
   - thumbnails: `/thumbnail/?size=256&format=jpeg&quality=90` vs `/rendered?width=256&height=256&quality=90`
     with `Accept: image/jpeg` (--thumb-format png for PNG); a 404 from the service skips those rows with a note;
   - a floor: `GET /api/instances/{id}/` (metadata JSON, no pixels) vs Orthanc `GET /instances/{id}`.
   Orthanc's /preview stretches the full pixel range (it ignores the window); /rendered applies the file's window
   like the service's /image/ does, so the /rendered rows compare the same output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pydicom

from ..harness.httpclient import probe
from ..harness.measure import Measure, Req, Stopwatch, describe_machine, describe_packages, describe_repo, machine_info, run_requests
from ..harness.processes import log
from ..harness.report import comparison, print_report, write_result
from ..harness.stack import Stack, add_stack_arguments, upload_copies
from ..workload import CR_J2K_NAME, CR_UNC_NAME, CT_SIZE, Workload, cr_path, make_ct_template


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=50, help="requests per measurement (distinct copies for cold ones); default 50")
    ap.add_argument("--n-cr", type=int, default=None, help="requests for the large CR measurements (default: --n; each J2K decode ~1 s)")
    ap.add_argument("--clients", type=int, default=1, help="concurrent clients (default 1: sequential)")
    ap.add_argument("--thumb-size", type=int, default=256)
    ap.add_argument("--thumb-format", choices=("png", "jpeg", "webp"), default="jpeg",
                    help="thumbnail format (default jpeg, the service's default; Orthanc gets the matching Accept header)")
    ap.add_argument("--redis", action="store_true", help="run a throwaway redis-server and set REDIS_URL (shared render cache)")
    ap.add_argument("--samples", type=Path, default=None, help="save the first image of each measurement here")
    add_stack_arguments(ap, throttle=False)


def main(args: argparse.Namespace) -> int:
    n = args.n
    n_cr = args.n_cr if args.n_cr is not None else n
    clients = max(1, args.clients)
    if n < 1 or n_cr < 0:
        raise SystemExit("--n must be >= 1 and --n-cr >= 0")
    clock = Stopwatch()
    info = machine_info()
    results: dict[str, Measure] = {}

    ct_template = make_ct_template()
    cr_files = {"cr_j2k": cr_path(CR_J2K_NAME), "cr_unc": cr_path(CR_UNC_NAME)}
    cr_templates = {k: pydicom.dcmread(p) for k, p in cr_files.items() if p is not None and n_cr > 0}
    early_notes = [f"{CR_J2K_NAME if k == 'cr_j2k' else CR_UNC_NAME} not found in pydicom-data: {k} rows skipped"
                   for k, p in cr_files.items() if p is None]  # fmt: skip
    quality = "" if args.thumb_format == "png" else "&quality=90"
    thumb_q = f"size={args.thumb_size}&format={args.thumb_format}{quality}"
    orthanc_thumb_q = f"width={args.thumb_size}&height={args.thumb_size}{quality}"
    orthanc_accept = {"png": "image/png", "jpeg": "image/jpeg", "webp": None}[args.thumb_format]
    thumbs = [("ct", "ct_thumb"), *[(k, k + "_thumb") for k in cr_templates]]

    def measure(name: str, server: str, example: str, kind: str, make_client, paths: list[str], **kw) -> None:
        m = Measure(name, server, example, kind)
        results[m.key] = run_requests(m, make_client, [Req("GET", p, headers=kw.get("headers")) for p in paths], clients,
                                      ok_statuses=kw.get("ok", (200,)))  # fmt: skip

    with Stack("render", keep_tmp=args.keep_tmp) as stack:
        notes = stack.notes
        notes += early_notes
        redis_url = stack.redis() if args.redis else None
        service = stack.service(args, redis_url=redis_url)
        service.desc += f", cache: {'Redis (shared by the workers)' if redis_url else 'local memory (per worker process)'}"
        orthanc = stack.optional_orthanc(args)

        def copies(server, template, label: str, count: int) -> list[str]:
            return upload_copies(server, Workload(template, label).copy_bytes, count)

        log(f"uploading: service {2 * n + 2 * n_cr + 3}, orthanc {3 * n + 2 * n_cr + 3} copies")
        svc_ids = {"warmup_ct": copies(service, ct_template, "warmup-ct", 1), "ct_image": copies(service, ct_template, "ct-image", n)}
        for k, tpl in cr_templates.items():
            svc_ids["warmup_" + k] = copies(service, tpl, "warmup-" + k, 1)
        orth_ids: dict[str, list[str]] = {}
        if orthanc:
            for key in ("warmup_ct", "ct_preview", "ct_rendered", "ct_thumb"):
                orth_ids[key] = copies(orthanc, ct_template, key, 1 if key == "warmup_ct" else n)
            for k, tpl in cr_templates.items():
                orth_ids["warmup_" + k] = copies(orthanc, tpl, "warmup-" + k, 1)

        # does the service have the thumbnail route?
        status, _, data = probe(service.client, f"/api/instances/{svc_ids['warmup_ct'][0]}/thumbnail/?{thumb_q}")
        thumb_available = status == 200
        if status == 404:
            notes.append("service GET /api/instances/{id}/thumbnail/ answered 404 (route not there yet): thumbnail rows skipped for the service")
        elif status != 200:
            notes.append(f"service thumbnail probe answered HTTP {status}: {data[:200]!r}; thumbnail rows skipped for the service")
        if thumb_available:
            svc_ids["ct_thumb"] = copies(service, ct_template, "ct-thumb", n)
            for k, tpl in cr_templates.items():
                svc_ids[k + "_thumb"] = copies(service, tpl, k + "-thumb", n_cr)
        if orthanc:
            for k, tpl in cr_templates.items():
                st = probe(orthanc.client, f"/instances/{orth_ids['warmup_' + k][0]}/rendered?{orthanc_thumb_q}")[0]
                if st == 200:
                    orth_ids[k + "_thumb"] = copies(orthanc, tpl, k + "-thumb", n_cr)
                else:
                    ts = tpl.file_meta.TransferSyntaxUID
                    notes.append(f"{orthanc.desc} cannot render {cr_files[k].name} ({ts.name}, {ts}): HTTP {st} (its built-in DCMTK "
                                 "decoder has no JPEG 2000; that needs the GDCM plugin): Orthanc column empty for that row")  # fmt: skip
        log(f"uploads done ({clock.elapsed:.0f}s since start)")

        # process warm-up on throwaway instances (not cache warm-up of measured ones)
        for _ in range(max(2, 2 * args.workers)):
            probe(service.client, f"/api/instances/{svc_ids['warmup_ct'][0]}/image/")
            if thumb_available:
                for k in ["ct", *cr_templates]:
                    probe(service.client, f"/api/instances/{svc_ids['warmup_' + k][0]}/thumbnail/?{thumb_q}")
            if orthanc:
                probe(orthanc.client, f"/instances/{orth_ids['warmup_ct'][0]}/preview")
                probe(orthanc.client, f"/instances/{orth_ids['warmup_ct'][0]}/rendered")

        # the framework floor: a small JSON read, no pixels
        measure("metadata", "service", "/api/instances/{id}/", "json", service.client, [f"/api/instances/{svc_ids['warmup_ct'][0]}/"] * n)
        if orthanc:
            measure("metadata", "orthanc", "/instances/{id}", "json", orthanc.client, [f"/instances/{orth_ids['warmup_ct'][0]}"] * n)

        # the service
        ids = svc_ids["ct_image"]
        measure("ct_image_cold", "service", "/api/instances/{id}/image/", "cold", service.client, [f"/api/instances/{i}/image/" for i in ids])
        warm_path = f"/api/instances/{ids[0]}/image/"
        for _ in range(2 * args.workers + 2):  # the default cache is per worker process
            probe(service.client, warm_path)
        measure("ct_image_warm", "service", warm_path, "warm", service.client, [warm_path] * n)
        etag = results["service:ct_image_warm"].sample.get("etag")
        if etag:
            measure("ct_image_revalidate", "service", warm_path + " (If-None-Match)", "revalidate", service.client, [warm_path] * n,
                    ok=(304,), headers={"If-None-Match": etag})  # fmt: skip
        else:
            notes.append("the service's /image/ response carries no ETag (no cache yet?): its 'warm' rows are repeated renders")
        if thumb_available:
            for _, label in thumbs:
                log(f"service: {label} cold x{len(svc_ids[label])}")
                measure(label + "_cold", "service", "/api/instances/{id}/thumbnail/?" + thumb_q, "cold", service.client,
                        [f"/api/instances/{i}/thumbnail/?{thumb_q}" for i in svc_ids[label]])  # fmt: skip
        log(f"service measured ({clock.elapsed:.0f}s since start)")

        if orthanc:
            for endpoint in ("preview", "rendered"):
                ids = orth_ids["ct_" + endpoint]
                measure(f"ct_{endpoint}_cold", "orthanc", f"/instances/{{id}}/{endpoint}", "cold", orthanc.client,
                        [f"/instances/{i}/{endpoint}" for i in ids])  # fmt: skip
                warm_path = f"/instances/{ids[0]}/{endpoint}"
                probe(orthanc.client, warm_path)
                measure(f"ct_{endpoint}_warm", "orthanc", warm_path, "warm", orthanc.client, [warm_path] * n)
            if orthanc_accept is None:
                notes.append(f"Orthanc cannot return {args.thumb_format}: its thumbnail rows are skipped")
            else:
                for _, label in thumbs:
                    if label in orth_ids:
                        measure(label + "_cold", "orthanc", "/instances/{id}/rendered?" + orthanc_thumb_q, "cold", orthanc.client,
                                [f"/instances/{i}/rendered?{orthanc_thumb_q}" for i in orth_ids[label]], headers={"Accept": orthanc_accept})  # fmt: skip
            log(f"orthanc measured ({clock.elapsed:.0f}s since start)")

    # ---------------- report
    for s in results.values():
        if s.errors:
            notes.append(f"{s.server} {s.name}: {len(s.errors)} failed requests, e.g. {s.errors[0][:200]}")

    def cell(name: str, server: str, q: float) -> float | None:
        s = results.get(f"{server}:{name}")
        return s.p(q) if s is not None and not s.errors else None

    ct = f"CT {CT_SIZE}x{CT_SIZE} 16-bit"
    ts, tf = args.thumb_size, args.thumb_format
    rows = []
    for endpoint in ("preview", "rendered"):
        for temp in ("cold", "warm"):
            for label, q in (("p50", 0.5), ("p95", 0.95)):
                rows.append(comparison(f"{ct} render {temp} {label}  (/image/ vs /{endpoint})", cell(f"ct_image_{temp}", "service", q),
                                       cell(f"ct_{endpoint}_{temp}", "orthanc", q)))  # fmt: skip
    if "service:ct_image_revalidate" in results:
        rows.append(comparison(f"{ct} revalidate 304 p50 (If-None-Match)", cell("ct_image_revalidate", "service", 0.5), None))
    rows += [
        comparison("instance metadata JSON p50 (no pixels: HTTP+auth+DB floor)", cell("metadata", "service", 0.5), cell("metadata", "orthanc", 0.5)),
        comparison(f"{ct} thumbnail {ts} {tf} cold p50", cell("ct_thumb_cold", "service", 0.5), cell("ct_thumb_cold", "orthanc", 0.5)),
        comparison(f"CR {CR_J2K_NAME} 1955x1841 J2K thumbnail {ts} {tf} cold p50", cell("cr_j2k_thumb_cold", "service", 0.5),
                   cell("cr_j2k_thumb_cold", "orthanc", 0.5)),
        comparison(f"CR {CR_UNC_NAME} 1955x1841 unc. thumbnail {ts} {tf} cold p50", cell("cr_unc_thumb_cold", "service", 0.5),
                   cell("cr_unc_thumb_cold", "orthanc", 0.5)),
    ]  # fmt: skip

    header = [
        describe_machine(info),
        describe_packages(info, "pydicom", "pillow", "numpy", "Django", "pylibjpeg-openjpeg") + f"; {orthanc.desc if orthanc else 'Orthanc n/a'}",
        f"service: {service.desc}; {describe_repo(info)}",
        f"n={n} (CR n={n_cr}), clients={clients}; times in ms, wall time per request incl. body read; ratio = service/orthanc",
    ]
    print_report(header, rows)
    print("\nresponses (first of each measurement); p50/p95 ms; throughput over the measurement:")
    for s in results.values():
        smp = s.sample
        dims = f"{smp.get('width')}x{smp.get('height')}" if smp.get("width") else "-"
        ctype = (smp.get("content_type") or "-").split(";")[0]
        p50, p95 = (f"{v:9.1f}" if v is not None else f"{'n/a':>9}" for v in (s.p(0.5), s.p(0.95)))
        print(f"  {s.server:<8} {s.name:<20} {ctype:<16} {dims:>9} {smp.get('bytes', 0):>7} B  etag={'yes' if smp.get('etag') else 'no ':<3}"
              f"  {p50} {p95}  {s.rate or 0.0:6.1f} req/s")  # fmt: skip
    if args.samples:
        args.samples.mkdir(parents=True, exist_ok=True)
        for s in results.values():
            if s.sample_bytes and s.sample.get("format") in ("png", "jpeg", "webp"):
                (args.samples / f"{s.server}-{s.name}.{s.sample['format']}").write_bytes(s.sample_bytes)
        print(f"sample images in {args.samples}")
    if notes:
        print("\nnotes:\n" + "\n".join(f"  - {note}" for note in notes))

    failed = any(s.errors for s in results.values())
    write_result(
        args.json, rows, info=info, orthanc_version=orthanc.version if orthanc else None, service_server=service.desc,
        config={"n": n, "n_cr": n_cr, "clients": clients, "thumb_size": ts, "thumb_format": tf,
                "ct": f"CT_small.dcm upscaled bilinearly to {CT_SIZE}x{CT_SIZE}, noise sigma 6, WC/WW 40/400",
                "cr_files": {k: str(v) if v else None for k, v in cr_files.items()},
                "percentiles": "linear interpolation between closest ranks"},
        measurements={key: s.stats(with_latencies=True) for key, s in results.items()}, notes=notes,
        elapsed_s=round(clock.elapsed, 1), **({"server_logs_tail": stack.log_tails()} if failed else {}),
    )  # fmt: skip
    return 1 if failed else 0
