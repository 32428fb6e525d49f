"""A minimal WebSocket (RFC 6455) for the live stream: the server side's opening handshake and the
framing both sides need, plus a small blocking client (tests, bench/live.py, the DevTools client).

Written here because the project's environment has no WebSocket package; only what the live
stream uses: text and binary messages (unfragmented when sent, fragments joined when read), ping /
pong, close. Checked against Chromium (tests/test_live_viewer.py: the page's WebSocket talks to
our server, our client talks to Chromium's DevTools server).
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from urllib.parse import urlparse

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 64 << 20  # bytes; a larger incoming message closes the connection


class ConnectionClosed(Exception):
    """The peer closed the connection (or it broke)."""


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip().encode("ascii") + GUID).digest()).decode("ascii")


def _recv_exact(rfile, n: int) -> bytes:
    """``n`` bytes from a buffered reader (``socket.makefile("rb")``: bytes that arrive with the
    handshake are kept for the frames after it)."""
    try:
        data = rfile.read(n)
    except OSError as e:
        raise ConnectionClosed(f"connection broken: {e}") from None
    if data is None or len(data) < n:
        raise ConnectionClosed("connection closed")
    return data


def encode_frame(opcode: int, payload: bytes, mask: bool = False) -> bytes:
    """One final frame; clients must mask (``mask`` True), servers must not."""
    n = len(payload)
    head = bytearray([0x80 | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head.append(mbit | n)
    elif n < 1 << 16:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + _xor(payload, key)


def _xor(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    reps = (len(data) + 3) // 4
    k = int.from_bytes((key * reps)[: len(data)], "little")
    return (int.from_bytes(data, "little") ^ k).to_bytes(len(data), "little")


def read_frame(rfile) -> tuple[bool, int, bytes]:
    """(final, opcode, payload) of the next frame (unmasked)."""
    b0, b1 = _recv_exact(rfile, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", _recv_exact(rfile, 2))[0]
    elif n == 127:
        n = struct.unpack(">Q", _recv_exact(rfile, 8))[0]
    if n > MAX_MESSAGE:
        raise ConnectionClosed(f"message of {n} bytes is too large")
    key = _recv_exact(rfile, 4) if b1 & 0x80 else None
    payload = _recv_exact(rfile, n)
    return bool(b0 & 0x80), b0 & 0x0F, (_xor(payload, key) if key else payload)


def read_message(rfile, send, mask_replies: bool) -> tuple[int, bytes]:
    """The next text or binary message (fragments joined) from ``rfile``; answers pings through
    ``send(bytes)``; raises ``ConnectionClosed`` on a close frame (answered) or a broken connection."""
    parts, first_op = [], None
    while True:
        fin, op, payload = read_frame(rfile)
        if op == OP_PING:
            send(encode_frame(OP_PONG, payload, mask_replies))
            continue
        if op == OP_PONG:
            continue
        if op == OP_CLOSE:
            try:
                send(encode_frame(OP_CLOSE, payload[:2], mask_replies))
            except OSError:
                pass
            raise ConnectionClosed("closed by the peer")
        if op != OP_CONT:
            first_op, parts = op, []
        parts.append(payload)
        if fin and first_op is not None:
            return first_op, b"".join(parts)


def read_http_head(rfile, limit: int = 100) -> tuple[str, dict[str, str]]:
    """Request/status line and headers (lower-case names) of an HTTP/1.1 head."""
    lines = []
    while True:
        line = rfile.readline(8192)
        if not line:
            raise ConnectionClosed("connection closed during the handshake")
        line = line.decode("latin-1").rstrip("\r\n")
        if not line:
            break
        lines.append(line)
        if len(lines) > limit:
            raise ConnectionClosed("handshake too long")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return (lines[0] if lines else ""), headers


def server_handshake(sock: socket.socket, rfile) -> str:
    """Answer a client's opening handshake (read from ``rfile``); returns the request path. A
    request that is not a WebSocket upgrade gets ``400`` and ``ConnectionClosed``."""
    line, headers = read_http_head(rfile)
    parts = line.split()
    key = headers.get("sec-websocket-key")
    if len(parts) < 2 or parts[0] != "GET" or key is None or "websocket" not in headers.get("upgrade", "").lower():
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        raise ConnectionClosed("not a WebSocket request")
    sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode("ascii"))
    return parts[1]


class WebSocketClient:
    """A blocking client: ``WebSocketClient("ws://127.0.0.1:8765/")``, ``recv() -> str | bytes``,
    ``send_text``, ``close``."""

    def __init__(self, url: str, timeout: float | None = 30.0, recv_buffer: int | None = None) -> None:
        u = urlparse(url)
        if u.scheme != "ws":
            raise ValueError(f"only ws:// URLs are supported, not {url}")
        self.sock = socket.socket(socket.AF_INET6 if ":" in (u.hostname or "") else socket.AF_INET)
        if recv_buffer is not None:  # before connecting: a fixed window, no autotuning (tests)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(recv_buffer))
        self.sock.settimeout(timeout)
        self.sock.connect((u.hostname, u.port or 80))
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode("ascii"))
        self.rfile = self.sock.makefile("rb")
        status, headers = read_http_head(self.rfile)
        if " 101 " not in f"{status} " or headers.get("sec-websocket-accept") != accept_key(key):
            self.sock.close()
            raise ConnectionClosed(f"handshake refused: {status}")

    def recv(self) -> str | bytes:
        op, payload = read_message(self.rfile, self.sock.sendall, mask_replies=True)
        return payload.decode("utf-8") if op == OP_TEXT else payload

    def send_text(self, text: str) -> None:
        self.sock.sendall(encode_frame(OP_TEXT, text.encode("utf-8"), mask=True))

    def close(self) -> None:
        try:
            self.sock.sendall(encode_frame(OP_CLOSE, struct.pack(">H", 1000), mask=True))
        except OSError:
            pass
        self.sock.close()
