"""Wire frames: a length, a version byte, a msgpack map. Sans I/O.

    +----------------+---------+-------------------------+
    | length (u32 BE)| version | msgpack map             |
    +----------------+---------+-------------------------+
      4 bytes          1 byte    length - 1 bytes

`length` counts the version byte and the body. The version byte is 0xB1: its high
nibble (0xB) marks a licentia frame, its low nibble the frame version (1). Every
body is a map with an integer "id"; requests add "op", replies add "ok". docs/protocol.md
lists the messages.

`FrameDecoder.feed(data)` takes bytes as they arrive and returns the complete messages;
it raises nothing but `ProtocolError`:

- a frame longer than the limit (default 1 MiB), an empty length, or bytes after a
  fatal error: `fatal=True`; answer with an error frame and close the connection;
- a frame of the right length whose version byte, msgpack or map is wrong:
  `fatal=False`; the frame is skipped, answer with an error frame (with the request's
  id when it could be read) and call `feed(b"")` to go on with the bytes after it.

Messages decoded before the bad frame in the same call are on `error.messages`.

Bodies are decoded with bounds, before anything validates them: a string of at most
`MAX_STR` bytes, binary data of at most the frame limit, arrays of at most `MAX_ARRAY`
items, maps of at most `MAX_MAP` entries, no extension types, and (msgpack's own stack)
nesting of at most 1024 levels; a body beyond any of them is "not msgpack" (not fatal).
"""

from __future__ import annotations

import struct
import threading

import msgpack

from licentia.model.errors import ErrorCode, LicentiaError

# A protected program imports this at start: no typing or collections.abc at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    Message = dict[str, Any]
else:
    Message = dict

FRAME_VERSION = 1
VERSION_BYTE = 0xB0 | FRAME_VERSION
MAX_FRAME = 1 << 20  # default limit of the length field (version byte + body)
MAX_STR = 1 << 16  # bytes of one string in a body
MAX_ARRAY = 1 << 16  # items of one array
MAX_MAP = 1 << 12  # entries of one map
HEADER_SIZE = 5
CONNECTION_ID = 0  # the id of error replies that concern the connection, not one request

_HEADER = struct.Struct(">IB")
_LENGTH = struct.Struct(">I")
_HEADER_unpack_from = _HEADER.unpack_from
_unpackb = msgpack.unpackb


def unpack_body(body: bytes | bytearray | memoryview, max_bin: int = MAX_FRAME) -> Any:
    """A frame body decoded within the bounds above; raises msgpack's errors (ValueError and
    its kin) for a body beyond them, as for one that is not msgpack."""
    return _unpackb(body, max_str_len=MAX_STR, max_bin_len=max_bin, max_array_len=MAX_ARRAY,
                    max_map_len=MAX_MAP, max_ext_len=0)


class _Packers(threading.local):
    """One reusable msgpack Packer per thread (msgpack.packb builds a new one per call)."""

    def __init__(self) -> None:
        self.pack = msgpack.Packer().pack


_packers = _Packers()


def packb(obj: Any) -> bytes:
    """`msgpack.packb(obj)` on this thread's reusable Packer (same bytes, no new Packer)."""
    packed: bytes = _packers.pack(obj)
    return packed


class ProtocolError(LicentiaError):
    """A frame that cannot be read. `fatal`: the connection must close.
    `request_id`: the id of the request it belonged to, or 0 when unknown."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        fatal: bool = False,
        request_id: int = CONNECTION_ID,
        messages: list[Message] | None = None,
    ) -> None:
        super().__init__(code, message, hint=_PROTOCOL_HINT)
        self.fatal = fatal
        self.request_id = request_id
        self.messages: list[Message] = messages if messages is not None else []


_PROTOCOL_HINT = "the peer does not speak licentia's protocol (or this version of it); check both ends' versions"


class FrameDecoder:
    """Turns a byte stream into messages. One per connection; not thread-safe."""

    __slots__ = ("_buf", "_failed", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held back: the start of a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add `data`; return every message now complete, in order."""
        if self._failed:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "the connection already failed", fatal=True)
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        elif type(data) is bytes:
            # fast path: exactly one whole, good frame (the usual read of a small request)
            end = len(data)
            if end > 5:
                length, version = _HEADER_unpack_from(data)
                if length + 4 == end and version == VERSION_BYTE and length <= self.max_frame:
                    try:
                        msg = unpack_body(data[5:], self.max_frame)
                    except Exception:
                        pass  # the slow path below says what is wrong
                    else:
                        if type(msg) is dict and type(msg.get("id")) is int:
                            return [msg]
            buf = data
        elif isinstance(data, memoryview):
            buf = data.tobytes()
        else:
            buf = data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        limit = self.max_frame
        while end - pos >= 4:
            length = _LENGTH.unpack_from(buf, pos)[0]
            if length > limit or length == 0:
                self._failed = True
                self._buf = bytearray()
                if length == 0:
                    raise ProtocolError(
                        ErrorCode.PROTOCOL_ERROR, "empty frame (length 0)", fatal=True, messages=out
                    )
                raise ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {length} bytes is larger than the limit of {limit}",
                    fatal=True,
                    messages=out,
                )
            stop = pos + 4 + length
            if stop > end:
                break
            version = buf[pos + 4]
            body = buf[pos + 5 : stop]
            pos = stop
            if version != VERSION_BYTE:
                self._keep(buf, pos, end)
                raise ProtocolError(
                    ErrorCode.PROTOCOL_ERROR,
                    f"frame version byte 0x{version:02x} is not 0x{VERSION_BYTE:02x}",
                    messages=out,
                )
            try:
                msg = unpack_body(body, self.max_frame)
            except Exception as exc:  # msgpack raises several types; all mean "not msgpack"
                self._keep(buf, pos, end)
                raise ProtocolError(
                    ErrorCode.PROTOCOL_ERROR, f"frame body is not msgpack ({type(exc).__name__})", messages=out
                ) from None
            if type(msg) is not dict:
                self._keep(buf, pos, end)
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "frame body is not a map", messages=out)
            rid = msg.get("id")
            if type(rid) is not int:
                self._keep(buf, pos, end)
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "message has no integer id", messages=out)
            out.append(msg)
        self._keep(buf, pos, end)
        return out

    def _keep(self, buf: bytes | bytearray, pos: int, end: int) -> None:
        if buf is self._buf:
            if pos:
                del self._buf[:pos]
        elif pos < end:
            self._buf = bytearray(buf[pos:end])


def encode(msg: Mapping[str, Any], max_frame: int = MAX_FRAME) -> bytes:
    """One frame holding `msg` (a map with an integer "id")."""
    try:
        body = _packers.pack(msg)
    except Exception as exc:  # TypeError, ValueError, OverflowError from msgpack
        raise ProtocolError(
            ErrorCode.INVALID_PARAMETER, f"message cannot be encoded: {exc}", request_id=_id_of(msg)
        ) from None
    if len(body) >= max_frame:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"message of {len(body) + 1} bytes is larger than the frame limit of {max_frame}",
            request_id=_id_of(msg),
        )
    return _HEADER.pack(len(body) + 1, VERSION_BYTE) + body


def error_reply(request_id: int, code: int, message: str, hint: str = "") -> Message:
    """The reply that refuses request `request_id` with a stable error code."""
    reply: Message = {"id": request_id, "ok": False, "code": int(code), "message": message}
    if hint:
        reply["hint"] = hint
    return reply


def error_frame(exc: LicentiaError, request_id: int | None = None) -> bytes:
    """An encoded error reply for `exc` (a `ProtocolError` knows its request id)."""
    if request_id is None:
        request_id = exc.request_id if isinstance(exc, ProtocolError) else CONNECTION_ID
    return encode(error_reply(request_id, exc.code, exc.message, exc.hint))


def raise_for_reply(reply: Message) -> Message:
    """Return a successful reply; raise the `LicentiaError` an error reply carries."""
    if reply.get("ok") is True:
        return reply
    raise reply_error(reply)


def reply_error(reply: Message) -> LicentiaError:
    """The `LicentiaError` an error reply carries (code kept, even one this side does not know)."""
    code = reply.get("code")
    message = reply.get("message")
    hint = reply.get("hint")
    if not isinstance(message, str):
        message = "the server refused the request"
    if type(code) is not int:
        return LicentiaError(ErrorCode.PROTOCOL_ERROR, f"malformed error reply: {message}")
    try:
        known = ErrorCode(code)
    except ValueError:
        return LicentiaError(ErrorCode.INTERNAL, f"server error {code}: {message}")
    return LicentiaError(known, message, hint if isinstance(hint, str) else None)


def _id_of(msg: Mapping[str, Any]) -> int:
    try:
        rid = msg.get("id")
    except Exception:
        return CONNECTION_ID
    return rid if type(rid) is int else CONNECTION_ID
