"""A real Redis Cluster (3 primaries) and a Sentinel set, for tests and benchmarks.

:class:`RedisClusterProcesses` starts three ``redis-server --cluster-enabled yes`` processes on
free loopback ports whose cluster bus ports (port + 10000) are free too, joins them with
``redis-cli --cluster create ... --cluster-yes`` (no replicas) and waits until every node says
``cluster_state:ok``. ``cluster-require-full-coverage no``: a dead primary takes only its own
slots down, the setting a cache wants. :class:`SentinelSet` starts one primary, one replica
and three sentinels (``redis-server <conf> --sentinel``) watching the primary as ``mymaster``
with ``down-after-milliseconds 1000``.

Every process is a :class:`~tests.redis_server.RedisServer` or a process started here, stopped
by its PID; every wait is bounded::

    with RedisClusterProcesses() as cluster:
        client = cluster.client()

Benchmarks import it as ``from tests.redis_cluster import RedisClusterProcesses``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from tests.redis_server import SYSTEM_REDIS_PORT, RedisServer, RedisServerError

__all__ = [
    "CLUSTER_BUS_OFFSET",
    "RedisClusterProcesses",
    "SentinelSet",
    "cluster_tools_missing",
    "sentinel_tools_missing",
]

CLUSTER_BUS_OFFSET = 10000
READY_TIMEOUT = 20.0  # seconds for a cluster to reach cluster_state:ok / sentinels to agree
SERVICE = "mymaster"


def cluster_tools_missing() -> str | None:
    """Why a cluster cannot be started here (a missing binary), or None."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            return f"{binary} is not on PATH (install it, e.g. apt-get install redis-server)"
    return None


def sentinel_tools_missing() -> str | None:
    """Why a Sentinel set cannot be started here, or None (sentinels are
    ``redis-server --sentinel``; ``redis-sentinel`` is the same binary)."""
    return cluster_tools_missing()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_cluster_port(taken: set[int]) -> int:
    """A loopback port free a moment ago whose bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if (
            port + CLUSTER_BUS_OFFSET < 65536
            and port not in taken
            and port != SYSTEM_REDIS_PORT
            and _port_free(port + CLUSTER_BUS_OFFSET)
        ):
            return port
    raise RedisServerError("no free port pair (port, port + 10000) on 127.0.0.1")


class RedisClusterProcesses:
    """Three primaries (and ``replicas`` replicas each, none by default), slots split evenly
    by ``redis-cli --cluster create``."""

    def __init__(
        self, primaries: int = 3, *, replicas: int = 0, node_timeout_ms: int = 1000
    ) -> None:
        self._count = primaries * (1 + replicas)
        self._replicas = replicas
        self._node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []

    @property
    def ports(self) -> list[int]:
        """The nodes' ports, in start order."""
        return [node.port for node in self.nodes]

    def primaries(self) -> list[RedisServer]:
        """The running nodes that are primaries now."""
        found = []
        for node in self.nodes:
            if not node.running:
                continue
            client = node.client(socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
            try:
                if client.info("replication").get("role") == "master":
                    found.append(node)
            except redis.RedisError:
                continue
            finally:
                client.close()
        return found

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`` (tiercache's cluster URL)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> RedisClusterProcesses:
        """Start the nodes, create the cluster and wait for ``cluster_state:ok``."""
        try:
            taken: set[int] = set()
            for _ in range(self._count):
                port = _free_cluster_port(taken)
                taken.add(port)
                node = RedisServer(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        str(self._node_timeout_ms),
                        "--cluster-require-full-coverage",
                        "no",
                        # A replica's first sync starts at once, not after the 5 s default.
                        "--repl-diskless-sync-delay",
                        "0",
                    ],
                    port=port,
                )
                self.nodes.append(node)
                node.start()
            addresses = [f"127.0.0.1:{p}" for p in self.ports]
            created = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    str(self._replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=READY_TIMEOUT,
                check=False,
            )
            if created.returncode != 0:
                raise RedisServerError(f"redis-cli --cluster create failed:\n{created.stdout}")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ok(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and knows all slots."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._node_ok(node) for node in self.nodes if node.running):
                return
            if time.monotonic() >= deadline:
                raise RedisServerError(f"cluster not ok within {timeout:g} s")
            time.sleep(0.05)  # poll interval of a bounded loop

    def _node_ok(self, node: RedisServer) -> bool:
        client = node.client(socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or "cluster_slots_assigned:16384" not in text:
                return False
            if not self._replicas:
                return True
            replication = client.info("replication")
            if replication.get("role") == "slave":
                return bool(replication.get("master_link_status") == "up")
            return int(replication.get("connected_slaves", 0)) >= self._replicas
        except redis.RedisError:
            return False
        finally:
            client.close()

    def client(self, **kwargs: Any) -> RedisCluster:
        """A new ``RedisCluster`` (bytes replies, short timeouts, no retries unless given)."""
        kwargs.setdefault("socket_timeout", 0.5)
        kwargs.setdefault("socket_connect_timeout", 0.5)
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        nodes = [ClusterNode("127.0.0.1", p) for p in self.ports]
        return RedisCluster(startup_nodes=nodes, **kwargs)

    def node_for_key(self, key: str) -> RedisServer:
        """The node that holds ``key``'s slot now (ask while every node runs)."""
        probe = self.client()
        try:
            node = probe.get_node_from_key(key)
            assert node is not None
            return next(n for n in self.nodes if n.port == node.port)
        finally:
            probe.close()

    def move_slot(self, slot: int, target: RedisServer) -> int:
        """Move ``slot`` and its keys to ``target`` as resharding does (IMPORTING/MIGRATING,
        MIGRATE in batches, SETSLOT NODE on both); return how many keys moved."""
        owner = self.node_for_slot(slot)
        if owner is target:
            return 0
        source, dest = owner.client(), target.client()
        try:
            source_id = source.execute_command("CLUSTER", "MYID").decode()
            target_id = dest.execute_command("CLUSTER", "MYID").decode()
            dest.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            moved = 0
            while True:
                keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                source.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                )
                moved += len(keys)
            for client in (dest, source):
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            return moved
        finally:
            source.close()
            dest.close()

    def node_for_slot(self, slot: int) -> RedisServer:
        """The node that serves ``slot`` now, by CLUSTER SLOTS of a running node."""
        node = next(n for n in self.nodes if n.running)
        client = node.client()
        try:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        finally:
            client.close()
        raise RedisServerError(f"no node serves slot {slot}")

    def flushall(self) -> None:
        """FLUSHALL on every running node."""
        for node in self.nodes:
            if node.running:
                client = node.client()
                try:
                    client.flushall()
                finally:
                    client.close()

    def stop(self) -> None:
        """Stop every node (by PID) and remove their directories."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterProcesses:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SentinelSet:
    """One primary, one replica, three sentinels watching the primary as ``mymaster``."""

    def __init__(self, *, down_after_ms: int = 1000) -> None:
        self._down_after_ms = down_after_ms
        self.primary = RedisServer()
        self.replica: RedisServer | None = None
        self._dir: Path | None = None
        self._sentinels: list[tuple[int, subprocess.Popen[bytes]]] = []

    @property
    def sentinel_ports(self) -> list[int]:
        """The sentinels' ports."""
        return [port for port, _ in self._sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:S1,.../mymaster/0`` (tiercache's Sentinel URL)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelSet:
        """Start primary, replica and sentinels; wait until the replica is in sync and every
        sentinel sees the replica and the other sentinels."""
        try:
            self.primary.start()
            self.replica = RedisServer(["--replicaof", "127.0.0.1", str(self.primary.port)])
            self.replica.start()
            self._dir = Path(tempfile.mkdtemp(prefix="tiercache-sentinel-"))
            taken: set[int] = {self.primary.port, self.replica.port}
            for i in range(3):
                port = _free_cluster_port(taken)
                taken.add(port)
                conf = self._dir / f"sentinel-{i}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {self._dir}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} {self._down_after_ms}\n"
                    f"sentinel failover-timeout {SERVICE} 10000\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n"
                )
                log = (self._dir / f"sentinel-{i}.log").open("ab")
                with log:
                    proc = subprocess.Popen(
                        ["redis-server", str(conf), "--sentinel"],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                self._sentinels.append((port, proc))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._replica_synced() and all(
                self._sentinel_sees_all(p) for p in self.sentinel_ports
            ):
                return
            time.sleep(0.05)  # poll interval of a bounded loop
        raise RedisServerError(f"sentinel set not ready within {READY_TIMEOUT:g} s")

    def _replica_synced(self) -> bool:
        assert self.replica is not None
        client = self.replica.client(socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            info = client.info("replication")
            return info.get("master_link_status") == "up"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _sentinel_sees_all(self, port: int) -> bool:
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            socket_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        try:
            master = client.execute_command("SENTINEL", "MASTER", SERVICE)
            fields = (
                dict(zip(master[::2], master[1::2], strict=False))
                if isinstance(master, list)
                else master
            )
            return int(fields["num-slaves"]) >= 1 and int(fields["num-other-sentinels"]) >= 2
        except (redis.RedisError, KeyError, ValueError):
            return False
        finally:
            client.close()

    def current_primary_port(self) -> int | None:
        """The port the sentinels currently name as the primary, or None."""
        for port in self.sentinel_ports:
            client = redis.Redis(
                host="127.0.0.1", port=port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
            )
            try:
                address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                if address:
                    return int(address[1])
            except redis.RedisError:
                continue
            finally:
                client.close()
        return None

    def stop(self) -> None:
        """Stop sentinels, replica and primary by PID; remove the directory."""
        for _, proc in self._sentinels:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._sentinels = []
        if self.replica is not None:
            self.replica.stop()
        self.primary.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
