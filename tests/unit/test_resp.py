"""PushReader: what Redis pushes to a subscribed connection, parsed from the socket's bytes.

A socketpair stands in for the connection: the tests write RESP2 and RESP3 frames to one
end, whole, in pieces and back to back, and read them as the listener does."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError, ResponseError

from tiercache.resp import ProtocolError, PushReader

MESSAGE_RESP2 = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
MESSAGE_RESP3 = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
SUBSCRIBED_RESP2 = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
SUBSCRIBED_RESP3 = b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
HELLO = {"type": "message", "pattern": None, "channel": b"ch", "data": b"hello"}
CONFIRMED = {"type": "subscribe", "pattern": None, "channel": b"ch", "data": 1}
PONG = {"type": "pong", "pattern": None, "channel": None, "data": b""}


@pytest.fixture
def pair() -> Iterator[tuple[PushReader, socket.socket]]:
    ours, theirs = socket.socketpair()
    try:
        yield PushReader(ours), theirs
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    ("confirmation", "message"),
    [(SUBSCRIBED_RESP2, MESSAGE_RESP2), (SUBSCRIBED_RESP3, MESSAGE_RESP3)],
    ids=["resp2", "resp3"],
)
def test_confirmation_and_messages_read_as_redis_py_dicts(
    pair: tuple[PushReader, socket.socket], confirmation: bytes, message: bytes
) -> None:
    reader, server = pair
    server.sendall(confirmation + message + message)
    assert reader.messages() == [CONFIRMED, HELLO, HELLO]
    assert reader.messages() == []  # nothing more, and no waiting


@pytest.mark.parametrize(
    "pong", [b"*2\r\n$4\r\npong\r\n$0\r\n\r\n", b"+PONG\r\n"], ids=["resp2", "resp3"]
)
def test_a_pong_in_either_protocol_is_a_pong(
    pair: tuple[PushReader, socket.socket], pong: bytes
) -> None:
    reader, server = pair
    server.sendall(pong)
    assert reader.messages() == [PONG]


def test_a_frame_split_anywhere_is_read_once_it_is_whole(
    pair: tuple[PushReader, socket.socket],
) -> None:
    """Every split point of two frames: nothing is returned early, nothing twice or lost."""
    reader, server = pair
    frames = MESSAGE_RESP2 + MESSAGE_RESP3
    for cut in range(1, len(frames)):
        server.sendall(frames[:cut])
        first = reader.messages()
        server.sendall(frames[cut:])
        assert first + reader.messages() == [HELLO, HELLO], cut


def test_binary_payloads_with_crlf_inside_are_read_by_their_length(
    pair: tuple[PushReader, socket.socket],
) -> None:
    reader, server = pair
    payload = b"\r\n\x00\xff*3\r\n" * 1000
    server.sendall(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$%d\r\n%s\r\n" % (len(payload), payload))
    assert reader.messages() == [dict(HELLO, data=payload)]


def test_more_than_one_read_of_bytes_at_once_is_drained(
    pair: tuple[PushReader, socket.socket],
) -> None:
    """Frames totalling several times the read size all come back in one call."""
    reader, server = pair
    payload = b"v" * 1000
    frame = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1000\r\n%s\r\n" % payload
    server.setblocking(True)
    server.sendall(frame * 200)  # ~200 KB, past the socket buffers on some systems
    got: list[dict[str, object]] = []
    while len(got) < 200:
        got += reader.messages()
        if len(got) < 200:
            assert reader.wait(5)
    assert got == [dict(HELLO, data=payload)] * 200


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"-NOPERM this user has no permissions to access the 'ch' channel\r\n", NoPermissionError),
        (b"-NOAUTH Authentication required.\r\n", AuthenticationError),
        (b"-WRONGPASS invalid username-password pair\r\n", AuthenticationError),
        (b"-ERR unknown command\r\n", ResponseError),
    ],
)
def test_an_error_reply_raises_redis_pys_exception_for_it(
    pair: tuple[PushReader, socket.socket], line: bytes, error: type[Exception]
) -> None:
    reader, server = pair
    server.sendall(line)
    with pytest.raises(error, match=line[1:10].decode()):
        reader.messages()


def test_a_closed_connection_raises_connection_error(
    pair: tuple[PushReader, socket.socket],
) -> None:
    reader, server = pair
    server.close()
    with pytest.raises(ConnectionError, match="closed"):
        reader.messages()


@pytest.mark.parametrize("garbage", [b"?what\r\n", b"*x\r\n", b"$abc\r\n"])
def test_bytes_that_are_not_resp_are_a_protocol_error(
    pair: tuple[PushReader, socket.socket], garbage: bytes
) -> None:
    """A ConnectionError: the listener drops the connection and subscribes again."""
    reader, server = pair
    server.sendall(garbage)
    with pytest.raises(ProtocolError):
        reader.messages()
    assert issubclass(ProtocolError, ConnectionError)


def test_resp3_scalars_and_attributes_are_skipped_not_fatal(
    pair: tuple[PushReader, socket.socket],
) -> None:
    """Frames a subscriber never asked for (an attribute, a map, a boolean, a null) are
    parsed and dropped; the messages around them still come through."""
    reader, server = pair
    server.sendall(
        b"|1\r\n+key\r\n:1\r\n"  # an attribute before an integer
        + b"%1\r\n+a\r\n#t\r\n"
        + b"_\r\n"
        + b",1.5\r\n"
        + MESSAGE_RESP3
        + b"=8\r\ntxt:pong\r\n"
    )
    assert reader.messages() == [HELLO]
