"""The bundled viewer as a person feels it: OHIF opening a CT series from the service and from Orthanc.

    python -m bench run viewer [--slices 200] [--repeat 3]

1. Workload (bench.workload, the 512x512 CT): --slices slices of one series, 2.5 mm apart, numbered; the same
   bytes go to both servers.
2. The service under gunicorn serves OHIF at /viewer/ itself (the build of `make viewer`, its own app-config.js);
   a session cookie of a staff user is set in the browser (what logging in to the admin gives). Orthanc runs with
   the DICOMweb plugin behind nginx, which serves the same OHIF build at /viewer/ and proxies /dicom-web/ to Orthanc
   (one origin, as OHIF needs without CORS); its app-config.js is the service's, pointed at /dicom-web.
3. Chromium (Debian, headless, 1280x900). Per server, a new browser context (an empty HTTP cache) opens
   /viewer/viewer?StudyInstanceUIDs=<uid> once "cold" (OHIF's 50 MB of code come from the server too), then
   --repeat more times in the same context, "warm" (the code is cached; images never are across pages). Each
   open is timed by the page's own clock from navigation start: the first image drawn (the viewport canvas's
   pixels vary) and every slice loaded (cornerstone's image cache holds --slices images; OHIF prefetches the
   displayed series). Rows: the cold open, and the median of the warm opens.
"""

from __future__ import annotations

import argparse
import copy
import os
import pwd
import shutil
import statistics
from typing import Any

from ..harness.measure import Stopwatch, describe_machine, describe_packages, describe_repo, machine_info
from ..harness.processes import ROOT, free_port, log, wait_http
from ..harness.report import comparison, print_report, write_result
from ..harness.stack import DEFAULT_DICOMWEB_PLUGIN, Server, Stack, add_stack_arguments
from ..workload import CT_SIZE, Workload, make_ct_template

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWER_BUILD = ROOT / "viewer" / "ohif" / "current"
TIMEOUT_MS = 60_000
# In the page: performance.now() once the viewport canvas shows an image (a 32 x 32 copy of it has contrast).
FIRST_IMAGE_JS = """() => {
  const canvas = document.querySelector('canvas.cornerstone-canvas');
  if (!canvas || !canvas.width) return false;
  const small = document.createElement('canvas'); small.width = small.height = 32;
  const ctx = small.getContext('2d'); ctx.drawImage(canvas, 0, 0, 32, 32);
  const px = ctx.getImageData(0, 0, 32, 32).data; let lo = 255, hi = 0;
  for (let i = 0; i < px.length; i += 4) { lo = Math.min(lo, px[i]); hi = Math.max(hi, px[i]); }
  return hi - lo > 20 ? performance.now() : false;
}"""
# Images in cornerstone's cache that have finished loading (its image cache is a Map of load records; OHIF
# exposes cornerstone as window.cornerstone).
LOADED_COUNT_JS = """() => {
  const cache = window.cornerstone && window.cornerstone.cache._imageCache;
  if (!cache) return 0;
  let loaded = 0;
  for (const entry of cache.values()) if (entry.loaded || entry.image) loaded += 1;
  return loaded;
}"""
# performance.now() once `slices` images are loaded.
ALL_LOADED_JS = f"""(slices) => (({LOADED_COUNT_JS})() >= slices ? performance.now() : false)"""
NGINX_CONF = """daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    include {mime};
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream orthanc {{ server 127.0.0.1:{orthanc_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        add_header Cross-Origin-Opener-Policy same-origin always;
        add_header Cross-Origin-Embedder-Policy require-corp always;
        location = /viewer/app-config.js {{ alias {tmp}/app-config.js; }}
        location /viewer/ {{ alias {build}/; try_files $uri /viewer/index.html; }}
        location /dicom-web/ {{
            proxy_pass http://orthanc;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
        location = /healthz {{ return 200 "ok"; }}
    }}
}}
"""


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--slices", type=int, default=200, help="CT slices in the series (default 200)")
    ap.add_argument("--repeat", type=int, default=3, help="warm opens per server after the cold one (default 3)")
    ap.add_argument("--orthanc-plugin", default=DEFAULT_DICOMWEB_PLUGIN, help="Orthanc's DICOMweb plugin (Debian orthanc-dicomweb)")
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx", help="nginx in front of Orthanc")
    add_stack_arguments(ap)


def ct_series(slices: int) -> tuple[str, list[bytes]]:
    template = make_ct_template()
    load = Workload(template, "viewer", patient=("Viewer^Bench", "BENCH-V1"), numbered=True)
    files = []
    for index in range(slices):
        load.template = copy.deepcopy(template)
        load.template.PatientName, load.template.PatientID = "Viewer^Bench", "BENCH-V1"
        load.template.ImagePositionPatient = [-250.0, -250.0, 2.5 * index]
        load.template.SliceLocation = 2.5 * index
        load.count = index
        files.append(load.copy_bytes())
    return load.study, files


def open_study(context: Any, url: str, slices: int) -> tuple[float, float]:
    """(ms to the first image drawn, ms to every slice loaded) of one open, by the page's clock."""
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text[:300]}"))
    page.on("response", lambda response: console.append(f"HTTP {response.status} {response.url[:200]}") if response.status >= 400 else None)
    try:
        page.goto(url)
        first = page.wait_for_function(FIRST_IMAGE_JS, polling="raf", timeout=TIMEOUT_MS).json_value()
        loaded = page.wait_for_function(ALL_LOADED_JS, arg=slices, polling=50, timeout=TIMEOUT_MS).json_value()
        return float(first), float(loaded)
    except Exception as exc:  # noqa: BLE001 - say what the page showed, then fail the scenario
        cached = page.evaluate(LOADED_COUNT_JS)
        raise RuntimeError(f"{url} on {page.url}: {exc.__class__.__name__}; images cached {cached}; console: {console[-15:]}") from None
    finally:
        page.close()


def measure(browser: Any, base_url: str, study: str, slices: int, repeat: int, cookies: list[dict]) -> dict[str, Any]:
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    try:
        if cookies:
            context.add_cookies(cookies)
        url = f"/viewer/viewer?StudyInstanceUIDs={study}"
        cold = open_study(context, url, slices)
        warm = [open_study(context, url, slices) for _ in range(repeat)]
    finally:
        context.close()
    return {"cold": cold, "warm": warm}


def main(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright

    if not (VIEWER_BUILD / "index.html").is_file():
        raise SystemExit(f"the OHIF build is missing in {VIEWER_BUILD}: run `make viewer`")
    clock = Stopwatch()
    info = machine_info()
    log(f"generating {args.slices} CT slices ({CT_SIZE}x{CT_SIZE})")
    study, files = ct_series(args.slices)
    results: dict[str, dict[str, Any]] = {}
    dicomweb_config = {"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with Stack("viewer", keep_tmp=args.keep_tmp) as stack:
        notes = stack.notes
        service = stack.service(args, throttle=args.throttle, env={"DICOM_VIEWER_ROOT": str(VIEWER_BUILD)})
        session = service.django.call("session_for", username="bench")  # the token user that stores the slices
        orthanc = stack.optional_orthanc(args, plugins=[args.orthanc_plugin], config=dicomweb_config)
        front: Server | None = None
        if orthanc:
            front = nginx_front(stack, args.nginx, orthanc, service)
        for name, server in (("service", service), ("orthanc", orthanc)):
            if server is None:
                continue
            log(f"{name}: storing {len(files)} slices")
            with server.client() as client:
                for content in files:
                    server.upload(client, content)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                for name, port, cookies in (
                    ("service", service.port, [{"name": "sessionid", "value": session["key"], "url": f"http://127.0.0.1:{service.port}"}]),
                    *([("orthanc", front.port, [])] if front else []),
                ):  # fmt: skip
                    log(f"{name}: opening the study in OHIF (1 cold + {args.repeat} warm)")
                    results[name] = measure(browser, f"http://127.0.0.1:{port}", study, args.slices, args.repeat, cookies)
            finally:
                browser.close()

    def cell(name: str, which: str, index: int) -> float | None:
        got = results.get(name)
        if got is None:
            return None
        if which == "cold":
            return got["cold"][index]
        return statistics.median(one[index] for one in got["warm"]) if got["warm"] else None

    rows = [
        comparison("first image drawn, cold (OHIF's code fetched too)", cell("service", "cold", 0), cell("orthanc", "cold", 0), "ms"),
        comparison(f"all {args.slices} slices loaded, cold", cell("service", "cold", 1), cell("orthanc", "cold", 1), "ms"),
        comparison(f"first image drawn, warm (median of {args.repeat})", cell("service", "warm", 0), cell("orthanc", "warm", 0), "ms"),
        comparison(f"all {args.slices} slices loaded, warm (median of {args.repeat})", cell("service", "warm", 1), cell("orthanc", "warm", 1), "ms"),
    ]
    notes.append("times are the page's performance.now() from navigation start; the service serves OHIF's files itself (Django), "
                 "Orthanc's side has them from nginx, which also proxies its DICOMweb")  # fmt: skip
    header = [
        describe_machine(info),
        describe_packages(info, "Django", "gunicorn", "psycopg", "playwright") + f"; {orthanc.desc if orthanc else 'Orthanc n/a'}",
        f"service: {service.desc}, {service.django.database.desc}, session login; {describe_repo(info)}",
        f"workload: one series of {args.slices} CT slices {CT_SIZE}x{CT_SIZE} 16-bit; OHIF {VIEWER_BUILD.resolve().name}; ratio = service/orthanc",
    ]
    print_report(header, rows, notes)
    write_result(args.json, rows, info=info, config={"slices": args.slices, "repeat": args.repeat, "workers": args.workers,
                 "threads": args.threads}, measurements=results, notes=notes, elapsed_s=round(clock.elapsed, 1))  # fmt: skip
    return 0


def nginx_front(stack: Stack, nginx: str, orthanc: Server, service: Server) -> Server:
    """nginx on a free port: OHIF's build at /viewer/ (the service's app-config.js, pointed at /dicom-web) and
    Orthanc's /dicom-web/ behind it."""
    with service.client() as client:
        status, _, config, _ = client.request("GET", "/viewer/app-config.js")
    if status != 200:
        raise RuntimeError(f"the service's /viewer/app-config.js answered HTTP {status}")
    (stack.tmp / "app-config.js").write_bytes(config.replace(b'"/dicomweb"', b'"/dicom-web"'))
    port = free_port()
    user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.geteuid() == 0 else ""
    conf = stack.tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=stack.tmp, user=user, mime="/etc/nginx/mime.types", orthanc_port=orthanc.port,
                                      port=port, build=VIEWER_BUILD.resolve()))  # fmt: skip
    proc = stack._process("nginx", [nginx, "-p", str(stack.tmp), "-c", str(conf)])
    wait_http(proc, port, "/healthz")
    return Server(proc, port, f"nginx in front of {orthanc.desc}")

