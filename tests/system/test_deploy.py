"""Deployment files, checked by the tools that will read them, and `make dist` /
`make install` run for real.

- systemd/distasks.service and the template systemd/distasks@.service: `systemd-analyze
  verify` and `systemd-analyze security` (an instance of the template), and the template
  differs from the unit only where an instance must;
- deploy/nginx/distasks.conf: `nginx -t`, then a real nginx in front of a stub upstream;
- deploy/prometheus/alerts.yml: `promtool check rules` and `promtool test rules`;
- `make dist`: the zipapp runs `check-config`, and `serve` under PR_SET_MDWE (the kernel's
  MemoryDenyWriteExecute) against this test's PostgreSQL and Redis;
- `make install DESTDIR=...`: the layout, and an existing config is kept.

The tools come from scripts/install-tools.sh (Debian packages, as root), once per session.
"""

from __future__ import annotations

import ctypes
import http.server
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import free_port, wait_task

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "distasks.service"
TEMPLATE = REPO / "systemd" / "distasks@.service"
NGINX_CONF = REPO / "deploy" / "nginx" / "distasks.conf"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DIST = REPO / "dist" / "distasks"
# Where `make install` puts the executable, as the unit's ExecStart names it.
INSTALLED_BIN = "/usr/local/bin/distasks"

# Debian's nginx lives in /usr/sbin, which is not always on PATH.
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])

# prctl(2): refuse mappings that are (or become) writable and executable at once; kept
# across execve. systemd >= 254 implements MemoryDenyWriteExecute=yes with it.
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def which(tool: str) -> str:
    path = shutil.which(tool, path=TOOL_PATH)
    assert path, f"{tool} not found after scripts/install-tools.sh"
    return path


def run(args: list[str | Path], *, timeout: float = 120, check: bool = True,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if check:
        assert result.returncode == 0, (
            f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def tools() -> None:
    """systemd-analyze, nginx and promtool, installed if missing (about 10 s from Debian's
    packages on a fresh machine; nothing when present)."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "install-tools.sh")],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        reason = f"scripts/install-tools.sh failed: {result.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI runs as root with apt: it must be able to check these
        pytest.skip(reason)


def unit_settings(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of a unit file (comments and sections dropped); repeated keys
    keep every value in order."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


# --- systemd ------------------------------------------------------------------------------


@pytest.fixture(params=["distasks.service", "distasks@.service"])
def verifiable_unit(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The unit, or the template, with ExecStart pointing at a stub executable under
    tmp_path: verify checks that the binary exists, and /usr/local/bin/distasks does not
    exist on a test machine. For the template, the path of its instance `distasks@1`
    (systemd-analyze reads the template beside it)."""
    stub = tmp_path / INSTALLED_BIN.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    name: str = request.param
    text = (REPO / "systemd" / name).read_text()
    assert text.count(f"ExecStart={INSTALLED_BIN} ") == 1
    unit = tmp_path / name
    unit.write_text(text.replace(f"ExecStart={INSTALLED_BIN} ", f"ExecStart={stub} "))
    return unit.with_name(name.replace("@.", "@1.")) if "@" in name else unit


def test_unit_passes_systemd_analyze_verify(tools: None, verifiable_unit: Path):
    result = run([which("systemd-analyze"), "verify", verifiable_unit])

    # Unknown keys, misplaced keys and bad values are warnings with exit code 0.
    assert [line for line in result.stderr.splitlines() if "distasks" in line] == []


def test_unit_hardening_keeps_exposure_low(tools: None, verifiable_unit: Path):
    # `systemd-analyze security` scores 0 (locked down) to 10 (unprotected); --threshold
    # is in tenths and fails above it. The unit scores 1.2 ("OK") as written, an instance
    # of the template 1.1.
    result = run([which("systemd-analyze"), "security", "--offline=yes", "--threshold=20",
                  verifiable_unit])

    assert f"Overall exposure level for {verifiable_unit.name}" in result.stdout


def test_template_is_the_unit_but_for_what_makes_instances_share_a_port():
    unit = unit_settings(UNIT.read_text())
    template = unit_settings(TEMPLATE.read_text())

    differs = {key for key in unit.keys() | template.keys()
               if unit.get(key) != template.get(key)}
    assert differs == {"Description", "Environment", "EnvironmentFile", "SyslogIdentifier"}
    assert sorted(template["Environment"]) == sorted(
        [*unit["Environment"], "DISTASKS_HTTP_REUSE_PORT=true"])
    # The common file first, the instance's own after it (a later assignment wins).
    assert template["EnvironmentFile"] == [*unit["EnvironmentFile"], "-/etc/distasks/%i.env"]
    assert template["SyslogIdentifier"] == ["distasks@%i"]


def test_unit_settings_fit_the_daemon():
    unit = unit_settings(UNIT.read_text())
    config = tomllib.loads((REPO / "config" / "distasks.toml").read_text())

    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == [f"{INSTALLED_BIN} serve --config /etc/distasks/distasks.toml"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["EnvironmentFile"] == ["-/etc/distasks/env"]
    # The daemon exits within grace + 5 s (architecture §5.5); systemd must wait longer.
    assert float(unit["TimeoutStopSec"][0]) > config["worker"]["grace_period_s"] + 5
    # With ProtectSystem=strict only the cache directory is writable: shiv unpacks there.
    assert unit["ProtectSystem"] == ["strict"]
    # Production needs a key for every call, whatever the shipped config file allows.
    assert unit["Environment"] == ["DISTASKS_AUTH_ANONYMOUS=none",
                                   f"SHIV_ROOT=/var/cache/{unit['CacheDirectory'][0]}"]


# --- nginx --------------------------------------------------------------------------------


def nginx_wrapper(tmp_path: Path, site: Path) -> Path:
    """A main nginx.conf that includes `site` inside http {} and keeps every path it writes
    under tmp_path."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/client_body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {site};
}}
""")
    return conf


def nginx_args(conf: Path) -> list[str | Path]:
    return [which("nginx"), "-c", conf, "-p", conf.parent, "-e", conf.parent / "error.log"]


def test_nginx_config_passes_nginx_t(tools: None, tmp_path: Path):
    result = run([*nginx_args(nginx_wrapper(tmp_path, NGINX_CONF)), "-t"])

    assert "test is successful" in result.stderr


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with what arrived: method, path, headers, body size."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        size = int(self.headers.get("Content-Length", 0))
        self.rfile.read(size)
        body = json.dumps({"method": self.command, "path": self.path, "body_bytes": size,
                           "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def echo_upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def nginx(tools: None, tmp_path: Path, echo_upstream: int) -> Iterator[str]:
    """The example config served by a real nginx on a free loopback port, proxying to the
    echo upstream instead of a daemon on :8080; yields its base URL."""
    port = free_port()
    text = NGINX_CONF.read_text()
    for old, new in [("    listen 80;\n", f"    listen 127.0.0.1:{port};\n"),
                     ("    listen [::]:80;\n", ""),
                     ("server 127.0.0.1:8080;", f"server 127.0.0.1:{echo_upstream};")]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    site = tmp_path / "site.conf"
    site.write_text(text)
    process = subprocess.Popen([str(a) for a in nginx_args(nginx_wrapper(tmp_path, site))]
                               + ["-g", "daemon off;"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen within 10 s"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful stop
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_nginx_proxies_with_forwarding_headers(nginx: str):
    with httpx.Client(base_url=nginx, timeout=10) as client:
        r = client.get("/api/v1/tasks/abc?wait=30", headers={"Host": "distasks.example.com"})

    assert r.status_code == 200
    seen = r.json()
    assert seen["path"] == "/api/v1/tasks/abc?wait=30"
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["host"] == "distasks.example.com"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-request-id"] == r.headers["x-request-id"]
    # HTTP/1.1 keep-alive to the upstream: nginx sends no "Connection: close".
    assert "close" not in headers.get("connection", "")


def test_nginx_limits_bodies_to_the_daemons_16_mib(nginx: str):
    with httpx.Client(base_url=nginx, timeout=30) as client:
        fits = client.post("/api/v1/tasks/batch", content=b"x" * (16 * 1024 * 1024 - 1024))
        too_big = client.post("/api/v1/tasks/batch", content=b"x" * (16 * 1024 * 1024 + 1))

    assert fits.status_code == 200
    assert fits.json()["body_bytes"] == 16 * 1024 * 1024 - 1024
    assert too_big.status_code == 413


def test_nginx_serves_metrics_to_localhost_only(nginx: str):
    # Linux routes all of 127.0.0.0/8 to loopback: 127.0.0.2 stands for a foreign client.
    foreign = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=nginx, timeout=10) as local, \
            httpx.Client(base_url=nginx, timeout=10, transport=foreign) as other:
        assert local.get("/metrics").status_code == 200
        assert other.get("/metrics").status_code == 403
        assert other.get("/readyz").status_code == 200


# --- Prometheus ---------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check(tools: None):
    result = run([which("promtool"), "check", "rules", ALERTS])

    assert "SUCCESS" in result.stdout


def test_alert_rules_pass_their_unit_tests(tools: None):
    result = run([which("promtool"), "test", "rules", ALERTS_TEST])

    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_where_it_fires():
    # (Read with regular expressions: the project has no YAML parser, and promtool has
    # already parsed both files above.)
    rules = re.split(r"\n      - alert: ", ALERTS.read_text())[1:]
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels",
                           ALERTS_TEST.read_text()))

    assert {rule.split()[0] for rule in rules} == fired
    for rule in rules:
        name = rule.split()[0]
        assert re.search(r"\n        for: \d+[smh]\n", rule), name
        assert re.search(r"\n          severity: (critical|warning)\n", rule), name
        assert "\n          summary: " in rule and "\n          description: " in rule, name


# --- make dist and make install -----------------------------------------------------------


@pytest.fixture(scope="module")
def zipapp() -> Path:
    """dist/distasks, built once by `make dist` (about 10-20 s: pip installs the pinned
    dependencies into the archive, mostly from pip's cache)."""
    run(["make", "--no-print-directory", "dist"], cwd=REPO, timeout=600)
    assert os.access(DIST, os.X_OK)
    return DIST


@pytest.fixture(scope="module")
def shiv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the zipapp unpacks itself (SHIV_ROOT, as the unit sets it), shared by the
    tests of this module so that it unpacks once."""
    return tmp_path_factory.mktemp("shiv-root")


def zipapp_env(shiv_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISTASKS_", "PYTHON", "VIRTUAL_ENV"))}
    env["SHIV_ROOT"] = str(shiv_root)
    return env


def test_the_zipapp_checks_the_shipped_config(zipapp: Path, shiv_root: Path):
    # The #! line: /usr/bin/env python3.X, X being the build's minor version.
    result = run([zipapp, "check-config", "--config", REPO / "config" / "distasks.toml"],
                 env=zipapp_env(shiv_root), cwd="/")

    assert "handlers:" in result.stdout


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3")
def test_the_zipapp_runs_on_the_system_python(zipapp: Path, shiv_root: Path):
    # A target has its distribution's Python, not the build's (here Debian's 3.11.2 versus
    # the venv's 3.11.x): dependencies that differ by Python patch version must be in it.
    system_python = os.path.realpath("/usr/bin/python3")
    version = run([system_python, "-c", "import sys; print(sys.version_info[:2])"]).stdout
    build = run([sys.executable, "-c", "import sys; print(sys.version_info[:2])"]).stdout
    if version != build:
        pytest.skip(f"the system python3 is {version.strip()}, the build's {build.strip()}")

    result = run([system_python, zipapp, "check-config",
                  "--config", REPO / "config" / "distasks.toml"],
                 env=zipapp_env(shiv_root), cwd="/")

    assert "handlers:" in result.stdout


def mdwe_command(args: list[str]) -> list[str]:
    """`args` run with memory-deny-write-execute in force (prctl, then exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE: kernels before 6.3 lack it
        pytest.skip("the kernel has no PR_SET_MDWE (Linux >= 6.3)")
    code = ("import ctypes, os, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):\n"
            "    sys.exit('prctl: ' + os.strerror(ctypes.get_errno()))\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n")
    return [sys.executable, "-c", code, *args]


def test_mdwe_wrapper_really_refuses_writable_executable_memory():
    probe = ("import mmap\n"
             "try:\n"
             "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
             "except PermissionError:\n"
             "    print('refused')\n")
    result = run(mdwe_command([sys.executable, "-c", probe]))

    assert result.stdout == "refused\n"


async def test_the_zipapp_serves_under_memory_deny_write_execute(
        zipapp: Path, shiv_root: Path, daemon_env: dict[str, str], tmp_path: Path):
    # This test's database, Redis prefix and port, and nothing of the venv.
    env = {k: v for k, v in daemon_env.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["SHIV_ROOT"] = str(shiv_root)
    url = f"http://127.0.0.1:{env['HTTP_PORT']}"
    log_path = tmp_path / "daemon.log"
    args = mdwe_command([str(zipapp), "serve", "--config", str(REPO / "config" / "distasks.toml")])
    with trio.fail_after(60):
        with open(log_path, "wb") as log_file:  # noqa: ASYNC230 (a local file, once)
            process = await trio.lowlevel.open_process(
                args, env=env, cwd="/", stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=lambda: os.umask(0o077))  # as the unit's UMask=
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                while True:
                    assert process.returncode is None, log_path.read_text()
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
                r = await client.post("/api/v1/tasks", json={"name": "deploy", "priority": 2})
                assert r.status_code == 201, r.text
                body = await wait_task(client, url, r.json()["task_id"])
                assert body["task"]["status"] == "completed"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0, log_path.read_text()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.fixture
def staged(zipapp: Path, tmp_path: Path) -> Path:
    return tmp_path / "stage"


def make_install(destdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["make", "--no-print-directory", "install", f"DESTDIR={destdir}", *args],
               cwd=REPO)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_make_install_lays_out_the_files(staged: Path):
    users_before = {u.pw_name for u in pwd.getpwall()}

    result = make_install(staged)

    binary = staged / INSTALLED_BIN.lstrip("/")
    unit = staged / "etc/systemd/system/distasks.service"
    config = staged / "etc/distasks/distasks.toml"
    assert binary.read_bytes() == DIST.read_bytes() and mode(binary) == 0o755
    assert unit.read_text() == UNIT.read_text() and mode(unit) == 0o644
    template = staged / "etc/systemd/system/distasks@.service"
    assert template.read_text() == TEMPLATE.read_text() and mode(template) == 0o644
    assert config.read_text() == (REPO / "config" / "distasks.toml").read_text()
    assert mode(config) == 0o640
    assert "systemctl daemon-reload && systemctl enable --now distasks" in result.stdout
    # A staged install (a package being built) creates no user on this machine.
    assert {u.pw_name for u in pwd.getpwall()} == users_before


def test_make_install_keeps_an_existing_config(staged: Path):
    config = staged / "etc/distasks/distasks.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[worker]\nconcurrency = 8\n")

    result = make_install(staged)

    assert config.read_text() == "[worker]\nconcurrency = 8\n"
    assert "kept the existing" in result.stdout


def test_make_install_prefix_moves_the_binary_and_the_unit_follows(staged: Path):
    make_install(staged, "PREFIX=/usr")

    assert (staged / "usr/bin/distasks").is_file()
    unit = unit_settings((staged / "etc/systemd/system/distasks.service").read_text())
    assert unit["ExecStart"] == ["/usr/bin/distasks serve --config /etc/distasks/distasks.toml"]
    template = unit_settings((staged / "etc/systemd/system/distasks@.service").read_text())
    assert template["ExecStart"] == unit["ExecStart"]
