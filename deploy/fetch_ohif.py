"""Fetch OHIF's built viewer from the npm registry and prepare it to be served at /viewer/ (`make viewer`).

    python deploy/fetch_ohif.py [--dest viewer/ohif] [--tarball ohif-app-3.13.2.tgz]

`npm pack @ohif/app@VERSION` downloads the package (the registry's tarball; npm checks its integrity against
the registry's record, and this script checks it again against the digest pinned below). Its `dist/` is the built
viewer, made for the origin's root (webpack's public path and `window.PUBLIC_URL` are "/"). Serving it under
/viewer/ needs four edits, made here once, into DEST/VERSION/:

- index.html: `window.PUBLIC_URL` and every root-absolute `href`/`src` get the /viewer/ prefix;
- index.html: the service-worker loader is dropped (it names a CDN; the service runs on offline networks);
- the style sheets' root-absolute `url(/...)` (the fonts) get the prefix, as do the manifest's icons and the
  microscopy viewer's module path in the app bundle (LITERAL_PATHS);
- each webpack runtime (`__webpack_require__.p = "/"`, in the app bundle and the worker bundles): /viewer/;
- the upstream app-config.js (a public demo server) is removed: the service generates its own.

DEST/current names the prepared version (what the service serves). Nothing here imports Django.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VERSION = "3.13.2"
PACKAGE = "@ohif/app"
# `npm view @ohif/app@3.13.2 dist.integrity`: the registry's own record of the tarball.
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
PREFIX = "/viewer/"
PUBLIC_PATH = re.compile(rb'__webpack_require__\.p = "/";')
ROOT_ATTRIBUTE = re.compile(r'\b(href|src)="/(?!/)')
CSS_ROOT_URL = re.compile(r"url\((['\"]?)/(?!/)")
# (files, a root-absolute path in them): each must be found at least once, or the build is not the one known here.
LITERAL_PATHS = (("manifest.json", '"/assets/'), ("app.bundle.*.js", "'/dicom-microscopy-viewer/"))
SERVICE_WORKER_TAG = re.compile(r'<script[^>]*src="/init-service-worker\.js"[^>]*></script>')


class Failed(Exception):
    """A reason the viewer could not be prepared, shown as it is."""


def integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def npm_pack(workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise Failed("npm is not installed: `apt-get install npm` (make viewer does it when run as root)")
    done = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=workdir, capture_output=True, text=True)
    if done.returncode != 0:
        raise Failed(f"npm pack {PACKAGE}@{VERSION} failed:\n{done.stderr.strip()[-2000:]}")
    found = sorted(workdir.glob("*.tgz"))
    if len(found) != 1:
        raise Failed(f"npm pack left {len(found)} tarballs in {workdir}")
    return found[0]


def rewrite_index(html: str) -> str:
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{PREFIX}"')
    html = SERVICE_WORKER_TAG.sub("", html)
    html = ROOT_ATTRIBUTE.sub(lambda m: f'{m.group(1)}="{PREFIX}', html)
    if f'window.PUBLIC_URL="{PREFIX}"' not in html or f'src="{PREFIX}app-config.js"' not in html:
        raise Failed("index.html does not have the shape this script knows (PUBLIC_URL, app-config.js)")
    return html


def prepare(tarball: Path, dest: Path) -> Path:
    found = integrity(tarball)
    if found != INTEGRITY:
        raise Failed(f"{tarball.name}: integrity {found} is not the pinned {INTEGRITY}")
    target = dest / VERSION
    staging = Path(tempfile.mkdtemp(prefix=".ohif-", dir=dest))
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(staging, filter="data")  # no absolute paths, links out of the tree or devices
        dist = staging / "package" / "dist"
        index = dist / "index.html"
        index.write_text(rewrite_index(index.read_text(encoding="utf-8")), encoding="utf-8")
        runtimes = 0
        for bundle in dist.glob("*.js"):
            data = bundle.read_bytes()
            rewritten, count = PUBLIC_PATH.subn(f'__webpack_require__.p = "{PREFIX}";'.encode(), data)
            if count:
                bundle.write_bytes(rewritten)
                runtimes += count
        if runtimes == 0:
            raise Failed("no webpack runtime with a public path of / was found in the bundles")
        for pattern, literal in LITERAL_PATHS:
            hits = 0
            for file in dist.glob(pattern):
                text = file.read_text(encoding="utf-8")
                hits += text.count(literal)
                file.write_text(text.replace(literal, literal[0] + PREFIX + literal[2:]), encoding="utf-8")
            if hits == 0:
                raise Failed(f"{pattern} does not hold {literal!r}: the build is not the one this script knows")
        for sheet in dist.glob("*.css"):
            css = sheet.read_text(encoding="utf-8")
            sheet.write_text(CSS_ROOT_URL.sub(lambda m: f"url({m.group(1)}{PREFIX}", css), encoding="utf-8")
        (dist / "app-config.js").unlink()
        (dist / "init-service-worker.js").unlink(missing_ok=True)
        if target.exists():
            shutil.rmtree(target)
        dist.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    current = dest / "current"
    current.unlink(missing_ok=True)
    current.symlink_to(VERSION)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=BASE_DIR / "viewer" / "ohif")
    parser.add_argument("--tarball", type=Path, help="a tarball fetched before (npm pack); default: fetch it now")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            tarball = args.tarball or npm_pack(Path(workdir))
            target = prepare(tarball, args.dest)
    except Failed as failed:
        print(f"fetch_ohif: {failed}", file=sys.stderr)
        return 2
    print(f"OHIF {VERSION} prepared in {target} (served at {PREFIX})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
