"""The container image (`make image`, scripts/image.sh, deploy/image/Containerfile),
checked without a container runtime: none runs containers on these machines.

- the image's root filesystem, mounted with `podman image mount`, runs its own entrypoint
  (tini, then `distasks serve` with the image's config and environment) under `chroot` as
  the image's user, against this test's PostgreSQL database and Redis prefix: its
  HEALTHCHECK passes, a task made over HTTP completes, and SIGTERM ends it with exit
  status 0;
- its metadata (user, port, stop signal, health check, labels) and its contents: a
  non-root user, nothing to build or install software with, no caches, a small size.

`make image` builds the image when this work tree's sources have none yet (about 45 s
from nothing: the base with mmdebstrap, the wheels, the build; about 10 s when only
distasks/ changed; nothing when the image is there). It needs root; podman and mmdebstrap
are installed with apt-get when missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import free_port, wait_task

REPO = Path(__file__).resolve().parents[2]
# The image's own user, as the Containerfile's USER names it.
IMAGE_UID = 10001
# `podman images` size of the image, uncompressed; measured 177 MB (docs/deployment.md).
MAX_SIZE_BYTES = 190_000_000
# Programs that build or install software, none of which the image may hold.
BUILD_TOOLS = ("gcc", "cc", "c++", "g++", "make", "ld", "as", "pip", "pip3", "apt",
               "apt-get", "curl", "wget", "git")


def run(args: list[str | Path], *, timeout: float = 120, check: bool = True,
        **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if check:
        assert result.returncode == 0, (
            f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    """The image's tag, built by `make image` if this work tree's sources have none."""
    reason = ""
    if os.geteuid() != 0:
        reason = "building and mounting the image needs root (mmdebstrap, podman)"
    else:
        tools = run(["bash", REPO / "scripts" / "image.sh", "tools"], timeout=900, check=False)
        if tools.returncode != 0:
            reason = f"podman and mmdebstrap are missing and did not install: {tools.stderr}"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI runs as root with apt: it must build and check the image
        pytest.skip(reason)
    result = run(["make", "--no-print-directory", "image"], cwd=REPO, timeout=1500)
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def inspected(image: str) -> dict:
    """The image's configuration (podman image inspect): Config, Size, Labels ..."""
    [inspected] = json.loads(run(["podman", "image", "inspect", image]).stdout)
    return inspected


@pytest.fixture(scope="module")
def rootfs(image: str) -> Iterator[Path]:
    """The image's files, mounted read-only by podman, with /proc and /dev for a chroot;
    everything is unmounted afterwards."""
    root = Path(run(["podman", "image", "mount", image]).stdout.strip())
    mounted: list[Path] = []
    try:
        run(["mount", "-t", "proc", "proc", root / "proc"])
        mounted.append(root / "proc")
        run(["mount", "--bind", "/dev", root / "dev"])
        mounted.append(root / "dev")
        yield root
    finally:
        for path in reversed(mounted):
            run(["umount", path], check=False)
        run(["podman", "image", "unmount", image], check=False)


def image_env(inspected: dict) -> dict[str, str]:
    return dict(line.split("=", 1) for line in inspected["Config"]["Env"])


def child_uids(pid: int) -> set[int]:
    """The real, effective, saved and file-system uids of the only child of `pid`."""
    [child] = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    status = Path(f"/proc/{child}/status").read_text().splitlines()
    return {int(uid) for uid in next(s for s in status if s.startswith("Uid:")).split()[1:]}


async def test_the_image_serves_under_chroot_and_stops_on_sigterm(
        inspected: dict, rootfs: Path, pg_dsn: str, redis_url: str, redis_prefix: str,
        tmp_path: Path):
    # Only what a user sets for a container: the servers and the port (and this test's
    # Redis prefix). The image's config binds every interface and wants a key.
    port = free_port()
    env = {**image_env(inspected), "DATABASE_URL": pg_dsn, "REDIS_URL": redis_url,
           "DISTASKS_REDIS_PREFIX": redis_prefix, "HTTP_PORT": str(port),
           "DISTASKS_MOVER_INTERVAL_S": "0.1",
           # tini is not PID 1 under chroot: as a subreaper it still reaps, and says nothing.
           "TINI_SUBREAPER": "1"}
    user = inspected["Config"]["User"]
    entrypoint, cmd = inspected["Config"]["Entrypoint"], inspected["Config"]["Cmd"]
    chroot = [shutil.which("chroot") or "/usr/sbin/chroot", f"--userspec={user}", str(rootfs)]

    keys = run([*chroot, *entrypoint, "keys", "create", "--name", "image-test",
                "--scope", "tasks:write", "--scope", "tasks:read", *cmd[1:]],
               env=env, cwd="/")
    token = keys.stdout.strip()
    assert token.startswith("dtk_"), keys.stdout + keys.stderr

    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "daemon.log"
    with trio.fail_after(90):
        with open(log_path, "wb") as log_file:  # noqa: ASYNC230 (a local file, once)
            process = await trio.lowlevel.open_process(
                [*chroot, *entrypoint, *cmd], env=env, cwd="/", stdout=log_file,
                stderr=subprocess.STDOUT)
        try:
            async with httpx.AsyncClient(
                    base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
                while True:
                    assert process.returncode is None, log_path.read_text()
                    try:
                        if (await client.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
                # tini's child, the daemon, runs as the image's user.
                assert child_uids(process.pid) == {IMAGE_UID}
                # The image's HEALTHCHECK, run as a runtime would: in the container, as
                # its user, with its environment.
                health = inspected["Healthcheck"]["Test"]
                assert health[0] == "CMD"
                checked = await trio.run_process([*chroot, *health[1:]], env=env, cwd="/",
                                                 capture_stderr=True, check=False)
                assert checked.returncode == 0, checked.stderr

                r = await client.post("/api/v1/tasks", json={"name": "image", "priority": 2})
                assert r.status_code == 201, r.text
                body = await wait_task(client, url, r.json()["task_id"])
                assert body["task"]["status"] == "completed"
            # As a runtime stops a container: the image's STOPSIGNAL to its PID 1 (tini),
            # which passes it on.
            process.send_signal(getattr(signal, inspected["Config"]["StopSignal"]))
            assert await process.wait() == 0, log_path.read_text()
            # ... and the health check tells when nothing serves.
            stopped = await trio.run_process([*chroot, *health[1:]], env=env, cwd="/",
                                             capture_stderr=True, check=False)
            assert stopped.returncode != 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    # One JSON object per line (DISTASKS_LOG_FORMAT=json in the image).
    lines = log_path.read_text().splitlines()
    assert lines and [line for line in lines if not line.startswith("{")] == []
    assert json.loads(lines[-1])["level"] == "INFO"


def test_the_image_runs_as_a_user_without_a_login(inspected: dict, rootfs: Path):
    assert inspected["Config"]["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    passwd = {line.split(":")[2]: line.split(":")
              for line in (rootfs / "etc/passwd").read_text().splitlines()}
    name, _, _, gid, _, home, shell = passwd[str(IMAGE_UID)]
    assert (name, gid, home, shell) == ("distasks", str(IMAGE_UID), "/nonexistent",
                                        "/usr/sbin/nologin")
    # The program and its libraries belong to root: the daemon cannot change them.
    for path in (rootfs / "opt/distasks").rglob("*"):
        if path.is_symlink():
            continue
        info = path.lstat()
        assert info.st_uid == 0 and not info.st_mode & 0o022, path
    # The config is readable by the daemon's group only, as `make install` leaves it.
    toml = rootfs / "etc/distasks/distasks.toml"
    info = toml.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, IMAGE_UID, 0o640)
    settings = tomllib.loads(toml.read_text())
    assert settings["http"]["host"] == "0.0.0.0" and settings["auth"]["anonymous"] == "none"


def test_the_image_holds_no_build_tools_or_caches(inspected: dict, rootfs: Path):
    path = image_env(inspected)["PATH"].split(":")
    found = [f"{d}/{tool}" for d in path for tool in BUILD_TOOLS
             if (rootfs / d.lstrip("/") / tool).exists()]
    assert found == []
    site = rootfs / "opt/distasks/lib/python3.11/site-packages"
    assert (site / "distasks").is_dir()
    leftovers = [p.name for p in site.iterdir()
                 if p.name.split("-")[0].lower() in ("pip", "setuptools", "wheel")]
    assert leftovers == []
    assert not (rootfs / "usr/lib/python3/dist-packages/pip").exists()
    # No wheels, no pip cache, no package lists or archives, nothing left in /tmp.
    for gone in ("wheels", "tools", "root/.cache"):
        assert not (rootfs / gone).exists(), gone
    assert list((rootfs / "tmp").iterdir()) == []
    assert not list((rootfs / "var/cache/apt").rglob("*.deb"))
    assert not [p for p in (rootfs / "var/lib/apt/lists").glob("*") if p.is_file()
                and p.name != "lock"]
    assert not list((rootfs / "var/cache/apt").glob("*.bin"))


def test_the_image_declares_port_signal_health_and_labels(inspected: dict):
    cfg = inspected["Config"]
    assert cfg["ExposedPorts"] == {"8080/tcp": {}}
    assert cfg["StopSignal"] == "SIGTERM"
    assert cfg["Entrypoint"][:2] == ["/usr/bin/tini", "--"]
    assert cfg["Cmd"] == ["serve", "--config", "/etc/distasks/distasks.toml"]
    health = inspected["Healthcheck"]
    assert health["Test"][0] == "CMD" and "/readyz" in health["Test"][-1]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    labels = inspected["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.source"]
    assert labels["org.opencontainers.image.revision"]
    assert inspected["Size"] < MAX_SIZE_BYTES, inspected["Size"]
