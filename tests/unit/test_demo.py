"""``python -m tiercache demo``: its steps run end to end, and its exit codes say what is
missing."""

from __future__ import annotations

import io
import sys

import pytest

from tiercache import demo

STEPS = [
    "1. Cold load: L1 miss, L2 miss, the loader runs",
    "2. L1 hits: no Redis, no lock",
    "3. Batches: set_many and get_many",
    "4. L1 eviction, then an L2 hit",
    "5. A second instance on the same namespace and Redis",
    "6. memoize",
    "7. Per tier: stats() counters of A and B, latencies measured by this demo",
]


def test_the_demo_walks_through_every_step_on_embedded_fakeredis() -> None:
    """Without a URL the demo runs on fakeredis, prints each step in order and exits 0."""
    out = io.StringIO()

    assert demo.run(None, out) == demo.EXIT_OK

    text = out.getvalue()
    positions = [text.index(f"\n{title}\n{'-' * len(title)}\n") for title in STEPS]
    assert positions == sorted(positions)
    assert text.startswith("tiercache ")
    assert "Redis: embedded in-process fakeredis server" in text
    assert "answered by loader" in text
    assert "answered by L2" in text
    assert "(read-your-writes)" in text
    assert 'stored in Redis as "tiercache-demo:memo:tiercache.demo.price_of:' in text
    assert text.rstrip().splitlines()[-1].startswith("Done in ")


def test_an_unreachable_url_exits_with_no_redis(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL nobody answers on: exit 1, the reason on stderr (password redacted), no walk."""
    out = io.StringIO()

    assert demo.run("redis://user:secret@127.0.0.1:1/0", out) == demo.EXIT_NO_REDIS

    assert out.getvalue() == ""
    err = capsys.readouterr().err
    assert "Cannot use Redis at redis://user:***@127.0.0.1:1/0" in err
    assert "secret" not in err


def test_without_fakeredis_and_without_a_url_the_demo_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No URL and no fakeredis: exit 2, naming the extra to install."""
    monkeypatch.setitem(sys.modules, "fakeredis", None)

    assert demo.run(None, io.StringIO()) == demo.EXIT_NO_FAKEREDIS

    assert "pip install 'tiercache[demo]'" in capsys.readouterr().err


def test_the_exit_codes_are_stable() -> None:
    """Scripts may depend on them."""
    codes = (demo.EXIT_OK, demo.EXIT_NO_REDIS, demo.EXIT_NO_FAKEREDIS, demo.EXIT_MISCONFIGURED)
    assert codes == (0, 1, 2, 3)
