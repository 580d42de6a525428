"""Reading what Redis pushes to a subscribed connection, straight from its socket.

redis-py connects and subscribes (credentials, TLS, Sentinel, RESP version: all its
options apply); from then on the subscriber's socket is read here. Every instance reads
every message of its namespace, and redis-py's read path (``PubSub.get_message``, its retry
wrapper, parser and message dict) costs a reading thread about 50 µs of CPU per message on
this project's machines, a bare ``poll`` + ``recv`` about 20 µs; with it, tiercache's
listener spent 80-100 µs per message, now 55-65 µs, all of its handling included
(``python -m benchmarks listener``).

Only what a subscribed connection receives is understood: arrays and pushes of bulk
strings and integers (messages, confirmations, RESP2's ``pong``), simple strings (RESP3's
``PONG``), errors, and RESP3's scalar types. Anything else is a protocol error, which ends
the subscription (the listener subscribes again).
"""

from __future__ import annotations

import select
import ssl
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    ConnectionError,
    NoPermissionError,
    ResponseError,
)

__all__ = ["ProtocolError", "PushReader"]

_CHUNK = 65536
# Errors Redis answers a subscribed connection with, by their first word.
_ERRORS: dict[str, type[ResponseError] | type[ConnectionError]] = {
    "NOPERM": NoPermissionError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
}


class ProtocolError(ConnectionError):
    """Bytes on the subscriber connection that are not RESP: the connection is unusable.

    Since: 0.2.0
    """


class _IncompleteError(Exception):
    """The buffer ends inside a frame: wait for more bytes."""


class PushReader:
    """Reads and parses the frames pushed to one subscribed socket; not thread-safe (the
    listener reads under its receive lock).

    The socket is switched to non-blocking mode: reads take what is there and return.

    Since: 0.2.0
    """

    __slots__ = ("_buffer", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = bytearray()
        sock.setblocking(False)

    def fileno(self) -> int:
        """The socket's descriptor."""
        fd: int = self._sock.fileno()
        return fd

    def messages(self) -> list[dict[str, Any]]:
        """Every complete frame that has arrived, as redis-py's message dicts (``type``,
        ``channel``, ``data``), without waiting. Raises redis-py's ``ConnectionError`` when
        the connection is closed or speaks something else, and the error Redis answered
        (``NoPermissionError``, ``AuthenticationError``, ``ResponseError``) as such."""
        self._receive()
        return self._frames()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for bytes to read; whether some came."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def _receive(self) -> None:
        sock, buffer = self._sock, self._buffer
        while True:
            try:
                data = sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return
            except OSError as exc:
                raise ConnectionError(
                    f"error reading from the subscriber connection: {exc}"
                ) from exc
            if not data:
                raise ConnectionError("the subscriber connection was closed by the server")
            buffer += data
            # A short read took everything the kernel had; TLS may still hold a decrypted
            # record that poll() cannot see, so read on until the socket says "would block".
            if len(data) < _CHUNK and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return

    def _frames(self) -> list[dict[str, Any]]:
        buffer = self._buffer
        messages: list[dict[str, Any]] = []
        pos = 0
        try:
            while pos < len(buffer):
                frame, pos = _parse(buffer, pos)
                message = _message(frame)
                if message is not None:
                    messages.append(message)
        except _IncompleteError:
            pass
        finally:
            del buffer[:pos]
        return messages


class _Error:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _parse(buffer: bytearray, pos: int) -> tuple[Any, int]:
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _IncompleteError
    kind = buffer[pos]
    line = bytes(buffer[pos + 1 : end])
    pos = end + 2
    if kind in (0x24, 0x3D, 0x21):  # '$' bulk, '=' verbatim, '!' bulk error
        size = _int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise _IncompleteError
        data = bytes(buffer[pos : pos + size])
        if kind == 0x21:
            return _Error(data.decode(errors="replace")), pos + size + 2
        return (data[4:] if kind == 0x3D else data), pos + size + 2
    if kind in (0x2A, 0x3E, 0x7E, 0x25):  # '*' array, '>' push, '~' set, '%' map
        count = _int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count * 2 if kind == 0x25 else count):
            item, pos = _parse(buffer, pos)
            items.append(item)
        return items, pos
    if kind == 0x7C:  # '|' attributes: metadata before the frame they describe
        for _ in range(_int(line) * 2):
            _, pos = _parse(buffer, pos)
        return _parse(buffer, pos)
    if kind == 0x2B:  # '+' simple string (a str, told apart from bulk strings)
        return line.decode(errors="replace"), pos
    if kind == 0x2D:  # '-' error
        return _Error(line.decode(errors="replace")), pos
    if kind in (0x3A, 0x28):  # ':' integer, '(' big number
        return _int(line), pos
    if kind == 0x5F:  # '_' null
        return None, pos
    if kind == 0x23:  # '#' boolean
        return line == b"t", pos
    if kind == 0x2C:  # ',' double
        return float(line), pos
    raise ProtocolError(f"unexpected RESP type byte {bytes([kind])!r} on the subscriber connection")


def _int(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError(f"malformed RESP length or integer {line[:32]!r}") from None


def _message(frame: Any) -> dict[str, Any] | None:
    """redis-py's message dict for ``frame``; raises the error Redis answered."""
    if isinstance(frame, _Error):
        first = frame.text.split(" ", 1)[0]
        raise _ERRORS.get(first, ResponseError)(frame.text)
    if isinstance(frame, list) and frame and isinstance(frame[0], bytes):
        kind = frame[0].lower().decode(errors="replace")
        if kind == "pong":
            return {"type": "pong", "pattern": None, "channel": None, "data": _at(frame, 1)}
        return {"type": kind, "pattern": None, "channel": _at(frame, 1), "data": _at(frame, 2)}
    if isinstance(frame, str) and frame.upper() == "PONG":  # RESP3 answers PING plainly
        return {"type": "pong", "pattern": None, "channel": None, "data": b""}
    return None  # anything else (an attribute, a reply nobody asked for): not for us


def _at(items: list[Any], index: int) -> Any:
    return items[index] if len(items) > index else None
