"""TierCache over TLS (``rediss://``) against a real redis-server with a TLS port: reads,
writes, and invalidations whose subscriber socket is an SSL socket (the listener polls it)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, _free_port
from tests.support import Loader, subscribed, wait_until
from tiercache import TierCache

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (skipped when openssl is not installed)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a certificate for the TLS test")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_server(redis_binary: str, certificate: tuple[Path, Path]) -> Iterator[tuple[int, Path]]:
    """A private redis-server with a TLS port (plus its plain port, used for readiness)."""
    cert, key = certificate
    tls_port = _free_port()
    args = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert)]
    args += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)]
    args += ["--tls-auth-clients", "no"]
    server = RedisServer(args, binary=redis_binary).start()
    try:
        yield tls_port, cert
    finally:
        server.stop()


def test_rediss_cache_reads_writes_and_invalidates_over_tls(
    tls_server: tuple[int, Path], namespace: str
) -> None:
    """Two rediss:// caches: an L2 hit across them, and a set() by one drops the other's L1
    copy through a TLS pub/sub connection."""
    port, cert = tls_server
    url = f"rediss://127.0.0.1:{port}/0"
    options = {"redis_options": {"ssl_ca_certs": str(cert)}, "namespace": namespace}
    with TierCache.from_url(url, **options) as writer, TierCache.from_url(url, **options) as reader:
        assert writer.get_or_set("k", Loader("v1")) == "v1"
        subscribed(writer, probe=True)
        subscribed(reader, probe=True)
        loader = Loader("unused")
        assert reader.get_or_set("k", loader) == "v1"  # an L2 hit over TLS
        assert loader.calls == 0
        assert reader.stats()["l2_hits"] == 1

        writer.set("k", "v2")
        # l1_ttl is 30 s and the wait at most 10: only the invalidation can make this pass.
        assert wait_until(lambda: reader.get("k") == "v2")
        stats = reader.stats()
        assert stats["bus_gaps"] == 0
        assert stats["bus_received"] - stats["bus_ignored"] - stats["bus_probes_heard"] == 1
