"""Private servers for fault tests: a PostgreSQL and a Redis of their own on free
loopback ports, which a test may kill, restart or cut off. The shared servers on 6379 and
5432 are never touched. Every wait is bounded."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import redis

from distasks.testing.daemon import free_port

HOST = "127.0.0.1"


# How long a server or a daemon may take to start answering.
SERVER_START_TIMEOUT_S = 30.0


# A psycopg connection attempt of the harness (PostgreSQL may be restarting).
PG_CONNECT_TIMEOUT_S = 3



def _wait_until(ok: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `ok` (blocking) until it is true; RuntimeError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:g}s")
        time.sleep(0.05)



class PrivateRedis:
    """A redis-server of its own on a free loopback port, without any persistence, so
    that a restart comes back empty.

    Blocking methods: call them from Trio with `trio.to_thread.run_sync`.
    """

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.dir = Path(tempfile.mkdtemp(prefix="distasks-faults-redis-"))
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5,
                           socket_connect_timeout=5)

    def start(self) -> None:
        """Start the server (empty) and wait until it answers PING."""
        self._process = subprocess.Popen(
            [self.binary or "redis-server", "--port", str(self.port), "--bind", HOST,
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(self._answers, SERVER_START_TIMEOUT_S, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"redis-server exited {self._process.returncode}; see "
                               f"{self.dir / 'redis.log'}")
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def kill(self) -> None:
        """SIGKILL: whatever it held is gone."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as in a network partition;
        `thaw()` brings it back with its data."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart_empty(self) -> None:
        """Kill the server and start a new, empty one on the same port."""
        self.kill()
        self.start()

    def client_kill(self) -> int:
        """Drop every normal client connection (the daemons'), keeping this one; returns
        how many were dropped."""
        with self.client() as c:
            return int(c.client_kill_filter(_type="normal", skipme=True))

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)



def _pg_bindir() -> Path:
    """The directory of initdb and pg_ctl: initdb's on PATH, else the newest Debian one."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not candidates:
        raise FileNotFoundError("initdb is not installed")
    return candidates[-1].parent



class PrivatePostgres:
    """A PostgreSQL cluster of its own: trust auth, listening only on 127.0.0.1 at a free
    port, its socket in its own directory under /tmp.

    Run as root, the server programs run as the `postgres` system user (`runuser`), and
    the directory is theirs. Durability settings are off (fsync, synchronous_commit):
    a fast shutdown still writes everything, and no test crashes the machine.
    Blocking methods: call them from Trio with `trio.to_thread.run_sync`.
    """

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root, and the server runs as
        # the postgres user.
        self.root = Path(tempfile.mkdtemp(prefix="distasks-faults-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self.bindir / program), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")

    def init(self) -> None:
        """initdb and configure; does not start the server."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# distasks fault tests\n"
                f"listen_addresses = '{HOST}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 200\n"
                "shared_buffers = 32MB\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60",
                  "start")

    def restart_fast(self) -> None:
        """`pg_ctl restart -m fast`: every connection is dropped, transactions in flight
        are rolled back, the server is back when this returns."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-m", "fast",
                  "-w", "-t", "60", "restart")

    def halt(self) -> None:
        """Stop the server, keeping its data: `start()` brings it back as it was."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def stop(self) -> None:
        """Stop the server (if running) and delete its directory."""
        if self.data.exists() and self.is_running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return (f"host={HOST} port={self.port} user=postgres dbname={dbname} "
                f"connect_timeout={PG_CONNECT_TIMEOUT_S}")

    def _admin(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> None:
        self._admin(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def terminate_backends(self, dbname: str) -> int:
        """pg_terminate_backend on every other backend connected to `dbname`; returns
        how many were terminated."""
        rows = self._admin(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
        return int(rows[0][0])


# How long PgBouncer may take to start answering.
PGBOUNCER_START_TIMEOUT_S = 15.0


def _pgbouncer_binary() -> str:
    """The pgbouncer program, installing Debian's package first when it is missing (as
    scripts/services.sh installs the servers a fresh machine lacks)."""
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None)
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgbouncer"]):
        subprocess.run([*sudo, *cmd], stdin=subprocess.DEVNULL, capture_output=True,
                       env=env, timeout=600, check=True)
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(found, os.X_OK):
        raise FileNotFoundError("pgbouncer is not installed and apt-get did not install it")
    return found


class PrivatePgBouncer:
    """A PgBouncer of its own in transaction mode, on a free loopback port, in front of the
    PostgreSQL at `upstream_host:upstream_port` (every database name passes through,
    user postgres, trust auth): never the Debian service.

    At most `pool_size` server connections per database; each new server connection gets
    `statement_timeout` from `connect_query`, as the README asks of a deployment (the
    daemon cannot send it through the pooler). PgBouncer refuses to run as root: run as
    root, it runs as the `postgres` system user, which owns its directory.
    Blocking methods: call them from Trio with `trio.to_thread.run_sync`.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, pool_size: int = 4,
                 statement_timeout_ms: int = 30_000) -> None:
        self.binary = _pgbouncer_binary()
        self.port = free_port()
        self.pool_size = pool_size
        self.dir = Path(tempfile.mkdtemp(prefix="distasks-pgbouncer-", dir="/tmp"))
        self._as_postgres = os.geteuid() == 0
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={upstream_host} port={upstream_port} "
            f"connect_query='SET statement_timeout = {statement_timeout_ms}'\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
            "max_client_conn = 1000\n"
            "server_lifetime = 3600\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            "admin_users = postgres\n"
            # psycopg sends none of these, but libpq-based tools (psql) do.
            "ignore_startup_parameters = extra_float_digits\n")
        if self._as_postgres:
            for path in (self.dir, *self.dir.iterdir()):
                shutil.chown(path, "postgres", "postgres")
        self._process: subprocess.Popen[bytes] | None = None

    def dsn(self, dbname: str) -> str:
        return (f"host={HOST} port={self.port} user=postgres dbname={dbname} "
                f"connect_timeout={PG_CONNECT_TIMEOUT_S}")

    def start(self) -> None:
        # As the postgres user directly (not through runuser, which would get the signals).
        who: dict[str, Any] = ({"user": "postgres", "group": "postgres", "extra_groups": []}
                               if self._as_postgres else {})
        self._process = subprocess.Popen([self.binary, str(self.dir / "pgbouncer.ini")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, **who)
        _wait_until(self._answers, PGBOUNCER_START_TIMEOUT_S, f"pgbouncer on port {self.port}")

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited {self._process.returncode}; see "
                               f"{self.dir / 'pgbouncer.log'}")
        try:
            with psycopg.connect(self.dsn("pgbouncer"), autocommit=True,
                                 prepare_threshold=None) as conn:
                conn.execute("SHOW VERSION")
                return True
        except psycopg.Error:
            return False

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop PgBouncer (SIGINT: at once, closing every connection) and delete its
        directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# How long a killed master's replica waits before it takes over, in ms: low, so that a
# failover in a test takes about a second (Redis's default is 15 s).
CLUSTER_NODE_TIMEOUT_MS = 1000
# How long nodes brought back may take to make the cluster whole before it is made anew.
REJOIN_TIMEOUT_S = 10.0
# Masters of a private cluster, each with one replica.
CLUSTER_MASTERS = 3


class PrivateRedisCluster:
    """A Redis Cluster of its own: CLUSTER_MASTERS masters and as many replicas, each a
    `redis-server --cluster-enabled yes` on free loopback ports (client and bus) in one
    temporary directory, joined by `redis-cli --cluster create`. No persistence: a node
    killed and started again comes back empty. A master may be killed (`kill_master`)
    and its replica waited for as the new master (`wait_failover`).

    Blocking methods: call them from Trio with `trio.to_thread.run_sync`.
    """

    def __init__(self, masters: int = CLUSTER_MASTERS) -> None:
        self.binary = shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        if self.binary is None or self.cli is None:
            raise FileNotFoundError("redis-server and redis-cli are needed for a cluster")
        self.dir = Path(tempfile.mkdtemp(prefix="distasks-redis-cluster-"))
        self.ports = [free_port() for _ in range(2 * masters)]
        self._masters = masters
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._masters_before: list[int] = []

    @property
    def url(self) -> str:
        """The daemon's redis.url for this cluster: any node, the scheme says cluster."""
        return f"redis+cluster://{HOST}:{self.ports[0]}/0"

    def node_client(self, port: int) -> redis.Redis:
        """A plain (single-node) client of the node on `port`."""
        return redis.Redis(host=HOST, port=port, socket_timeout=5, socket_connect_timeout=5,
                           decode_responses=True)

    def client(self) -> redis.RedisCluster:
        """A cluster client (as PrivateRedis.client gives a client of the server)."""
        return self.cluster_client()

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host=HOST, port=self.alive_ports()[0], socket_timeout=5,
                                  socket_connect_timeout=5, decode_responses=True)

    def start(self) -> None:
        """Start every node, join them into a cluster (a replica per master) and wait
        until every node says `cluster_state:ok`."""
        for port in self.ports:
            self._start_node(port)
        done = subprocess.run(
            [self.cli or "redis-cli", "--cluster", "create",
             *(f"{HOST}:{p}" for p in self.ports), "--cluster-replicas", "1", "--cluster-yes"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")
        self.wait_ok()

    def _start_node(self, port: int, *, fresh: bool = True) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        # A replica keeps the RDB its master sent it: a node must come back empty.
        (node_dir / "dump.rdb").unlink(missing_ok=True)
        if fresh:
            (node_dir / "nodes.conf").unlink(missing_ok=True)
        self._processes[port] = subprocess.Popen(
            [self.binary or "redis-server", "--port", str(port), "--bind", HOST,
             "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
             "--cluster-config-file", str(node_dir / "nodes.conf"),
             "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
             # A replica takes over however long ago it heard from its master, and
             # syncs at once rather than after the default 5 s delay.
             "--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0",
             "--save", "", "--appendonly", "no", "--dir", str(node_dir),
             "--logfile", str(node_dir / "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(lambda: self._answers(port), SERVER_START_TIMEOUT_S,
                    f"redis-server (cluster node) on port {port}")

    def _answers(self, port: int) -> bool:
        process = self._processes[port]
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited {process.returncode}; see "
                               f"{self.dir / str(port) / 'redis.log'}")
        try:
            with self.node_client(port) as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def alive_ports(self) -> list[int]:
        return [p for p, proc in self._processes.items() if proc.poll() is None]

    def _info(self, port: int) -> dict[str, str]:
        with self.node_client(port) as c:
            text = str(c.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def _state_ok(self) -> bool:
        """Every running node says `cluster_state:ok` and every running replica is in
        sync with its master (a replica that never synced would not take over)."""
        try:
            for port in self.alive_ports():
                if self._info(port).get("cluster_state") != "ok":
                    return False
                with self.node_client(port) as c:
                    replication = c.info("replication")
                if replication.get("role") == "slave" and (
                        replication.get("master_link_status") != "up"):
                    return False
            return True
        except redis.RedisError:
            return False

    def wait_ok(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        """Wait until every running node says `cluster_state:ok`."""
        try:
            _wait_until(self._state_ok, timeout_s, "redis cluster state ok")
        except RuntimeError as e:
            raise RuntimeError(f"{e}; nodes: {self._states()}") from None

    def _states(self) -> str:
        """Each running node's state, role and link, and its log's last lines."""
        out = []
        for port in self.alive_ports():
            try:
                info = self._info(port)
                with self.node_client(port) as c:
                    replication = c.info("replication")
                out.append(f"{port}: {info.get('cluster_state')} known "
                           f"{info.get('cluster_known_nodes')} {replication.get('role')} "
                           f"link {replication.get('master_link_status', '-')}")
            except redis.RedisError as e:
                out.append(f"{port}: {e}")
            log = self.dir / str(port) / "redis.log"
            if log.exists():
                out += ["   " + line for line in log.read_text().splitlines()[-4:]]
        return "\n".join(out)

    def masters(self) -> list[int]:
        """The ports of the running masters, as the running nodes see them."""
        out = []
        for port in self.alive_ports():
            with self.node_client(port) as c:
                if str(c.info("replication").get("role")) == "master":
                    out.append(port)
        return sorted(out)

    def master_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot now."""
        with self.cluster_client() as c:
            node = c.get_node_from_key(key)
            return int(node.port)

    def kill_master(self, port: int) -> None:
        """SIGKILL the master on `port`: what it had not yet copied to its replica is
        gone; its replica takes over after CLUSTER_NODE_TIMEOUT_MS (`wait_failover`)."""
        self._masters_before = self.masters()
        self._processes[port].kill()
        self._processes[port].wait(timeout=10)

    def wait_failover(self, old_port: int, timeout_s: float = SERVER_START_TIMEOUT_S) -> int:
        """Wait until a replica of the master that was on `old_port` (killed) took over
        and the cluster is ok again; the new master's port."""
        others = set(self.alive_ports())

        def promoted() -> bool:
            return len(self.masters()) == self._masters and self._state_ok()

        _wait_until(promoted, timeout_s, f"failover of the master on port {old_port}")
        return min(set(self.masters()) & others - set(self._masters_before))

    def rejoin(self, port: int) -> None:
        """Start the node on `port` again, empty but with its nodes.conf: it rejoins as a
        replica of the master that replaced it."""
        self._start_node(port, fresh=False)

    def kill(self) -> None:
        """SIGKILL every node: the whole cluster is gone; `start()` makes a new, empty
        one on the same ports."""
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP every node: connections stay open and nothing answers; `thaw()`
        brings the cluster back with its data (no node saw another fail meanwhile)."""
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)

    def is_running(self) -> bool:
        return bool(self._processes) and len(self.alive_ports()) == len(self.ports)

    def ensure_running(self) -> None:
        """Start the cluster, or bring back the nodes a test killed (as replicas) and
        wait until it is whole again; a cluster that does not recover so within
        REJOIN_TIMEOUT_S is made anew (empty), so one test cannot break the next."""
        if not self._processes:
            self.start()
            return
        if self._state_ok() and self.is_running():
            return
        for port in set(self.ports) - set(self.alive_ports()):
            self.rejoin(port)
        try:
            self.wait_ok(REJOIN_TIMEOUT_S)
        except RuntimeError:
            self.kill()
            self.start()

    def client_kill(self) -> int:
        """Drop every normal client connection on every node; returns how many."""
        dropped = 0
        for port in self.alive_ports():
            with self.node_client(port) as c:
                dropped += int(c.client_kill_filter(_type="normal", skipme=True))
        return dropped

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key starting with `prefix:` on every master."""
        for port in self.masters():
            with self.node_client(port) as c:
                keys = list(c.scan_iter(match=f"{prefix}:*", count=1000))
                for key in keys:
                    c.delete(key)

    def stop(self) -> None:
        """Stop every node and delete the directory."""
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self._processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
