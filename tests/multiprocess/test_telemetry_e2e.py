"""End to end, as an APM user sees it: ``gunicorn --preload -w 2`` serving a WSGI app whose
cache was built (and used) in the master, the SDK installed in each worker's ``post_fork``
(``otel_gunicorn_conf.py``), spans and metrics exported over OTLP/HTTP to a receiver this
test runs on loopback, decoded with ``opentelemetry-proto``.

Checked on what arrives: every request's span tree (the first request of each worker has
its cache spans; loads, L2 hits and a failing loader have the documented shape; the bus
self-probe is no trace of its own), each worker's metric points (its own reads from zero,
one ``tiercache.requests`` point per read, second-scale duration buckets), and that the
keys, which hold an e-mail address, appear nowhere.

With ``TIERCACHE_E2E_DUMP=path``, the decoded span trees are also written to ``path`` (the
trees shown in docs/telemetry.md come from such a run).
"""

from __future__ import annotations

import gzip
import http.client
import http.server
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.gunicorn import serve
from tests.redis_server import RedisServer
from tests.support import REPO_ROOT, wait_for

pytestmark = pytest.mark.redis

pb_trace = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
pb_metrics = pytest.importorskip("opentelemetry.proto.collector.metrics.v1.metrics_service_pb2")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from tiercache.telemetry import DURATION_BUCKETS, OMITTED_MESSAGE  # noqa: E402

WORKERS = 2
SERVER_TIMEOUT = 20.0  # gunicorn answering; both workers answering
STOP_TIMEOUT = 15.0  # workers flushing their telemetry and exiting
SECRET = "alice@example.com"  # in every key: must not appear in any span or metric
SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3
STATUS_CODE_ERROR = 2


# -- the OTLP/HTTP receiver ------------------------------------------------------------------------


class Receiver:
    """Accepts OTLP/HTTP protobuf POSTs on /v1/traces and /v1/metrics, keeps them decoded."""

    def __init__(self) -> None:
        self.traces: list[Any] = []
        self.metrics: list[Any] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    message: Any = pb_trace.ExportTraceServiceRequest()
                    target = receiver.traces
                    reply = pb_trace.ExportTraceServiceResponse()
                elif self.path == "/v1/metrics":
                    message = pb_metrics.ExportMetricsServiceRequest()
                    target = receiver.metrics
                    reply = pb_metrics.ExportMetricsServiceResponse()
                else:
                    self.send_error(404)
                    return
                message.ParseFromString(body)
                with receiver._lock:
                    target.append(message)
                    receiver.raw.append(body)
                payload = reply.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reports what matters

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(STOP_TIMEOUT)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def _attrs(key_values: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


class Span:
    """One decoded span, with the ``service.instance.id`` of the worker that sent it."""

    def __init__(self, span: Any, instance: str) -> None:
        self.instance = instance
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex() or None
        self.name = span.name
        self.kind = span.kind
        self.attributes = _attrs(span.attributes)
        self.events = [(event.name, _attrs(event.attributes)) for event in span.events]
        self.status = span.status.code
        self.start = span.start_time_unix_nano
        self.duration_us = (span.end_time_unix_nano - span.start_time_unix_nano) / 1000
        self.children: list[Span] = []

    def child(self, name: str) -> Span:
        found = [s for s in self.children if s.name == name]
        assert len(found) == 1, (name, [s.name for s in self.children])
        return found[0]

    def tree(self, depth: int = 0) -> str:
        shown = [
            f"{name}={self.attributes[name]}"
            for name in ("tiercache.tier", "tiercache.result", "error.type")
            if name in self.attributes
        ]
        if self.status == STATUS_CODE_ERROR:
            shown.append("status=ERROR")
        line = f"{'  ' * depth}{self.name:<{40 - 2 * depth}} {self.duration_us:>9,.0f} µs"
        lines = [" ".join([line, *shown]).rstrip()]
        lines += [kid.tree(depth + 1) for kid in sorted(self.children, key=lambda s: s.start)]
        return "\n".join(lines)


def _spans(receiver: Receiver) -> list[Span]:
    spans = [
        Span(span, str(_attrs(rs.resource.attributes)["service.instance.id"]))
        for request in receiver.traces
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    for span in spans:
        if span.parent_id is not None:
            by_id[span.trace_id, span.parent_id].children.append(span)
    return spans


def _metric_points(receiver: Receiver) -> dict[str, dict[str, list[tuple[dict[str, Any], Any]]]]:
    """{worker: {metric: [(attributes, point)]}} of the last export of each worker."""
    found: dict[str, dict[str, list[tuple[dict[str, Any], Any]]]] = {}
    for request in receiver.metrics:
        for rm in request.resource_metrics:
            instance = str(_attrs(rm.resource.attributes)["service.instance.id"])
            latest: dict[str, list[tuple[dict[str, Any], Any]]] = {}
            for sm in rm.scope_metrics:
                if sm.scope.name != "tiercache":
                    continue
                for metric in sm.metrics:
                    data = getattr(metric, metric.WhichOneof("data"))
                    latest[metric.name] = [(_attrs(p.attributes), p) for p in data.data_points]
            found[instance] = latest  # cumulative: the last export has the final counts
    return found


# -- gunicorn --------------------------------------------------------------------------------------


def _get(port: int, path: str) -> tuple[int, dict[str, Any] | None]:
    """One request on a new connection; (status, JSON answer); (0, None) if refused."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        return response.status, (json.loads(body) if path != "/up" else None)
    except ConnectionRefusedError:
        return 0, None
    finally:
        conn.close()


@pytest.fixture
def served(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> Iterator[tuple[int, Receiver, subprocess.Popen[bytes]]]:
    """The receiver and gunicorn --preload -w 2 exporting to it: (port, receiver, server)."""
    with Receiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(
            TIERCACHE_TEST_URL=redis_server.url,
            TIERCACHE_TEST_NAMESPACE=namespace,
            TIERCACHE_TEST_OTLP=receiver.url,
        )
        conf = str(REPO_ROOT / "tests" / "multiprocess" / "otel_gunicorn_conf.py")
        with serve(
            "tests.multiprocess.otel_wsgi_app:app",
            workers=WORKERS,
            env=env,
            log_path=tmp_path / "gunicorn.log",
            up=lambda port: _get(port, "/up")[0] == 200,
            timeout=SERVER_TIMEOUT,
            extra=["-c", conf],
            graceful=10,
        ) as (port, server):
            yield port, receiver, server


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM: each worker runs worker_exit (flushing its telemetry), then the master exits."""
    server.send_signal(signal.SIGTERM)
    assert server.wait(STOP_TIMEOUT) == 0


def test_gunicorn_preload_telemetry_over_otlp(
    served: tuple[int, Receiver, subprocess.Popen[bytes]],
) -> None:
    port, receiver, server = served
    answers: list[dict[str, Any]] = []

    def round_of(paths: list[str]) -> None:
        # Concurrent requests that each hold their worker a little: both workers answer.
        with ThreadPoolExecutor(len(paths)) as pool:
            for status, answer in pool.map(lambda p: _get(port, p), paths):
                assert answer is not None
                assert status == (500 if answer["path"] == "/fail" else 200), answer
                answers.append(answer)

    def key(n: int) -> str:
        return f"user:{SECRET}:{n}"

    round_of([f"/user?key={key(1)}&hold=0.05", f"/user?key={key(2)}&hold=0.05"])
    wait_for(
        lambda: (
            round_of([f"/user?key={key(n)}&hold=0.02" for n in (1, 2, 3, 1)])
            or len({a["pid"] for a in answers}) == WORKERS
        ),
        SERVER_TIMEOUT,
        "both workers to answer",
    )
    round_of([f"/fail?key={key(9)}", f"/user?key={key(1)}"])
    _stop(server)

    # -- spans ---------------------------------------------------------------------------------
    spans = _spans(receiver)
    roots = [s for s in spans if s.parent_id is None]
    # Every trace is a request: no stray root (the bus self-probe is not traced).
    assert {s.name for s in roots} == {"GET /user", "GET /fail"}, {s.name for s in roots}
    assert len(roots) == len(answers)
    assert all(s.kind == SPAN_KIND_SERVER for s in roots)
    workers = {s.instance for s in roots}
    assert workers == {str(a["pid"]) for a in answers}
    assert len(workers) == WORKERS
    for worker in workers:
        # The first request of each worker (never an L1 hit: L1 is empty after the fork)
        # has its cache spans, although the cache was built in the master.
        first = min((s for s in roots if s.instance == worker), key=lambda s: s.start)
        assert first.attributes["app.l1_hit"] is False
        first.child("tiercache.get_or_set")
    for root in roots:
        if root.attributes["app.l1_hit"]:
            assert root.children == []  # L1 hits are not traced by default
            continue
        op = root.child("tiercache.get_or_set")
        if root.name == "GET /fail":
            assert op.status == STATUS_CODE_ERROR
            assert op.attributes["error.type"] == "KeyError"
            ((event, details),) = op.events
            assert event == "exception"
            assert details["exception.message"] == OMITTED_MESSAGE
            assert details["exception.escaped"] == "True"
            continue
        tier = op.attributes["tiercache.tier"]
        assert tier in ("l2", "loader"), tier
        redis = [s for s in op.children if s.kind == SPAN_KIND_CLIENT]
        assert redis[0].name == "GET"
        for call in redis:
            assert call.attributes["db.system.name"] == call.attributes["db.system"] == "redis"
            assert call.attributes["db.namespace"] == "0"
            assert call.attributes["server.address"] == "127.0.0.1"
        if tier == "loader":
            names = {s.name for s in op.children}
            assert {"EVALSHA compare_and_set", "EVALSHA lease_write"} <= names, names
            op.child("tiercache.load").child("db.query")

    # -- metrics, per worker -------------------------------------------------------------------
    metrics = _metric_points(receiver)
    assert set(metrics) == workers
    for worker in workers:
        mine = [a for a in answers if str(a["pid"]) == worker]
        final = max((a["stats"] for a in mine), key=lambda s: s["l1_hits"] + s["l1_misses"])
        points = metrics[worker]
        requests = {
            (attrs["tiercache.tier"], attrs["tiercache.result"]): point.as_int
            for attrs, point in points["tiercache.requests"]
        }
        # One point per read, the worker's own reads only (not the master's load).
        assert sum(requests.values()) == len(mine), requests
        assert requests["l1", "hit"] == sum(a["l1_hit"] for a in mine) == final["l1_hits"]
        assert requests["loader", "error"] == sum(a["path"] == "/fail" for a in mine)
        ((_, loads),) = points["tiercache.loads"]
        assert loads.as_int == sum(a["loaded"] for a in mine) == final["loads"]
        for attrs, histogram in points["tiercache.operation.duration"]:
            assert tuple(histogram.explicit_bounds) == DURATION_BUCKETS, attrs

    # -- no key anywhere -----------------------------------------------------------------------
    assert receiver.raw
    for body in receiver.raw:
        assert SECRET.encode() not in body

    dump = os.environ.get("TIERCACHE_E2E_DUMP")
    if dump:
        Path(dump).write_text("\n\n".join(root.tree() for root in roots))
