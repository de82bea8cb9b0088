"""The production front: nginx in front of gunicorn, both in the foreground (`make serve`).

    DJANGO_SECRET_KEY=... python deploy/serve.py [--host 127.0.0.1] [--port 8080] [--run-dir run]

Renders deploy/nginx.conf.template into <run dir>/nginx.conf, runs `collectstatic --noinput` and `migrate`,
then starts gunicorn (gunicorn.conf.py, DEBUG off) on a unix socket in the run dir and nginx
(`nginx -p <run dir> -c nginx.conf`, unprivileged, nothing under /etc) on HOST:PORT. Ctrl-C or SIGTERM stops
both; if either exits on its own, the other is stopped and serve.py exits non-zero.

Environment, besides the service's own (docs/operations.md): DJANGO_SECRET_KEY (required), NGINX
(the nginx binary; default: found on PATH or /usr/sbin/nginx), NGINX_TRUSTED_PROXIES (comma-separated
addresses or CIDRs of proxies in front of nginx whose X-Forwarded-For/-Proto are believed; default none).
"""

from __future__ import annotations

import argparse
import grp
import ipaddress
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).resolve().parent / "nginx.conf.template"
# Room for multipart framing around a file of exactly the upload limit.
MULTIPART_SLACK = 1024 * 1024


class Refused(Exception):
    """A reason not to start, shown to the user as it is."""


def find_nginx() -> str:
    configured = os.environ.get("NGINX")
    found = configured or shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise Refused("nginx is not installed: `apt-get install nginx` (make serve does it when run as root), or set NGINX=/path/to/nginx")
    return found


def mime_types(nginx: str) -> str:
    for candidate in (Path(nginx).resolve().parent.parent / "conf" / "mime.types", Path("/etc/nginx/mime.types")):
        if candidate.is_file():
            return str(candidate)
    raise Refused("nginx's mime.types was not found (looked next to the binary and in /etc/nginx)")


def trusted_proxies(raw: str) -> list[str]:
    proxies = [item.strip() for item in raw.split(",") if item.strip()]
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise Refused(f"NGINX_TRUSTED_PROXIES: {proxy!r} is not an address or a CIDR") from None
    return proxies


def render(*, listen: str, run_dir: Path, upstream: str, static_root: Path, max_body: int, upstream_timeout: int,
           mime: str, proxies: list[str]) -> str:  # fmt: skip
    """The nginx configuration for these values (deploy/nginx.conf.template, its placeholders filled in)."""
    user = ""
    if os.geteuid() == 0:  # a root master would switch its workers to `nobody`; keep them the current user
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    values = {
        "USER_DIRECTIVE": user,
        "RUN_DIR": str(run_dir),
        "MIME_TYPES": mime,
        "MAX_BODY_BYTES": str(max_body),
        "UPSTREAM": upstream,
        "UPSTREAM_TIMEOUT": str(upstream_timeout),
        "LISTEN": listen,
        "STATIC_ROOT": str(static_root),
        "REAL_IP": "\n".join(
            [f"    set_real_ip_from {proxy};" for proxy in proxies]
            + (["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;"] if proxies else [])
        ),
        "TRUSTED_GEO": "\n".join(f"        {proxy} 1;" for proxy in proxies),
    }
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = [word for word in text.split() if word.startswith("@") and word.endswith("@") and len(word) > 2]
    if leftover:
        raise Refused(f"the nginx template has unfilled placeholders: {leftover}")
    return text


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def stop(process: subprocess.Popen, sig: int, timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--run-dir", type=Path, default=Path(os.environ.get("SERVE_RUN_DIR", BASE_DIR / "run")))
    parser.add_argument("--render-only", action="store_true", help="write and check <run dir>/nginx.conf, then exit")
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except Refused as refused:
        print(f"serve: {refused}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace) -> int:
    if not os.environ.get("DJANGO_SECRET_KEY"):
        raise Refused("DJANGO_SECRET_KEY is not set: export a long random value (it signs sessions and tokens)")
    env = dict(os.environ)
    # Production settings: DEBUG off; nginx sets X-Forwarded-For/-Proto itself (never passing a client's on),
    # so the service believes them. gunicorn trusts a unix socket peer's X-Forwarded-Proto as well.
    env["DJANGO_DEBUG"] = "0"
    env.setdefault("DJANGO_BEHIND_PROXY", "1")
    env.setdefault("AUDIT_TRUST_X_FORWARDED_FOR", "1")
    os.environ.update(env)
    sys.path.insert(0, str(BASE_DIR))
    from dicomsite import settings  # plain module: the limits and STATIC_ROOT exactly as the service reads them

    nginx = find_nginx()
    run_dir = args.run_dir.resolve()
    for sub in ("logs", "tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    socket_path = run_dir / "gunicorn.sock"
    env["GUNICORN_BIND"] = f"unix:{socket_path}"
    upstream_timeout = int(env.get("GUNICORN_TIMEOUT", "300")) + 10
    config = run_dir / "nginx.conf"
    config.write_text(
        render(
            listen=listen_address(args.host, args.port),
            run_dir=run_dir,
            upstream=f"unix:{socket_path}",
            static_root=Path(settings.STATIC_ROOT).resolve(),
            max_body=max(settings.DICOM_MAX_UPLOAD_BYTES, settings.DICOM_BULK_MAX_BYTES) + MULTIPART_SLACK,
            upstream_timeout=upstream_timeout,
            mime=mime_types(nginx),
            proxies=trusted_proxies(env.get("NGINX_TRUSTED_PROXIES", "")),
        )
    )
    nginx_cmd = [nginx, "-p", str(run_dir), "-c", str(config), "-e", str(run_dir / "logs" / "error.log")]
    checked = subprocess.run([*nginx_cmd, "-t", "-q"], capture_output=True, text=True)
    if checked.returncode != 0:
        raise Refused(f"nginx rejects {config}:\n{checked.stderr.strip()}")
    if args.render_only:
        print(config)
        return 0

    manage = [sys.executable, str(BASE_DIR / "manage.py")]
    for step in (["collectstatic", "--noinput", "-v0"], ["migrate", "--noinput", "-v0"]):
        if subprocess.run([*manage, *step], cwd=BASE_DIR, env=env).returncode != 0:
            raise Refused(f"manage.py {step[0]} failed")

    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    socket_path.unlink(missing_ok=True)
    # Own sessions: a terminal's Ctrl-C reaches serve.py only, which stops nginx first, then gunicorn.
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(BASE_DIR / "gunicorn.conf.py"), "--pid", str(run_dir / "gunicorn.pid"),
         "--control-socket", str(run_dir / "gunicorn.ctl"), "dicomsite.wsgi"],
        cwd=BASE_DIR, env=env, start_new_session=True,
    )  # fmt: skip
    front: subprocess.Popen | None = None
    try:
        deadline = time.monotonic() + 60
        while not socket_path.exists() and not stopping:
            if gunicorn.poll() is not None:
                raise Refused(f"gunicorn exited with status {gunicorn.returncode} before listening")
            if time.monotonic() > deadline:
                raise Refused("gunicorn did not listen within 60 s")
            time.sleep(0.05)
        if not stopping:
            front = subprocess.Popen(nginx_cmd, cwd=run_dir, env=env, start_new_session=True)
            print(f"serve: http://{listen_address(args.host, args.port)}/ (nginx, run dir {run_dir}); Ctrl-C stops", flush=True)
        while not stopping:
            if gunicorn.poll() is not None or (front is not None and front.poll() is not None):
                print("serve: gunicorn or nginx exited; stopping the other", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        if front is not None:
            stop(front, signal.SIGTERM, 10)  # nginx: fast shutdown (stalled clients would hold a graceful one)
        stop(gunicorn, signal.SIGTERM, 40)  # gunicorn: graceful, finishes requests in flight (graceful_timeout 30)
        socket_path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
