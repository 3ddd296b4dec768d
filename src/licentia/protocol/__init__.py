"""licentia's wire protocol: length-prefixed msgpack frames, the message catalogue, clients.

- `frames`: `encode`, `FrameDecoder` (sans I/O), `ProtocolError`, error replies;
- `messages`: operation names, their fields, `validate_request`;
- `client`: `Client` (blocking) and `AsyncClient` (asyncio, loaded on first use);
- `tls`: a TLS 1.3 client context that pins the server's certificate or trusts a CA.
- `rest`: reading central's REST answers (the JSON, or the error central raised).

docs/protocol.md describes the wire format and every message.
"""

from licentia.protocol.frames import (
    CONNECTION_ID,
    FRAME_VERSION,
    MAX_FRAME,
    VERSION_BYTE,
    FrameDecoder,
    Message,
    ProtocolError,
    encode,
    error_frame,
    error_reply,
    raise_for_reply,
    reply_error,
)
from licentia.protocol.messages import DEFAULT_PORT, PROTOCOL_VERSION, validate_request

__all__ = [
    "CONNECTION_ID", "DEFAULT_PORT", "FRAME_VERSION", "MAX_FRAME", "PROTOCOL_VERSION",
    "VERSION_BYTE", "FrameDecoder", "Message", "ProtocolError", "encode", "error_frame",
    "error_reply", "raise_for_reply", "reply_error", "validate_request",
]
