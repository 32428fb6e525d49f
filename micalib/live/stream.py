"""The live stream's server: WebSocket clients on one port, each with a bounded queue of its own.

``StreamServer(host, port)``: ``start()`` listens (a port in use or an address that cannot be bound
is one ``MICAError`` line), ``publish(unit)`` hands one message unit (a frame's JSON text and its
binary messages, sent together or dropped together) to every client's queue without ever
blocking: a client whose queue is full loses that unit and it is counted (``dropped``), so a slow
client never slows the tracker. A client's text requests (JSON with a ``type``) are answered by
``on_request(client, request) -> list of (opcode, bytes) | None``; ``subscribe`` requests set
``client.wants``. ``close(last)`` sends ``last`` to every client (waiting at most a second per
client) and closes them. Threads: one accepting, two per client (reader, sender).
"""
from __future__ import annotations

import errno
import json
import queue
import socket
import threading
from typing import Callable

from loguru import logger

from micalib.live.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    ConnectionClosed,
    encode_frame,
    read_message,
    server_handshake,
)
from utils.errors import MICAError

LOOPBACK = ("127.0.0.1", "::1", "localhost")
Unit = list  # [(opcode, payload bytes), ...] sent as consecutive messages


def text(obj: dict) -> tuple[int, bytes]:
    """A JSON text message (compact, NaN refused: the schema has none)."""
    return OP_TEXT, json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def binary(payload: bytes) -> tuple[int, bytes]:
    return OP_BINARY, payload


class Client:
    """One connected client: its bounded queue, counts and subscriptions."""

    def __init__(self, sock: socket.socket, address, queue_size: int) -> None:
        self.sock, self.address = sock, address
        self.rfile = sock.makefile("rb")
        self.queue: queue.Queue = queue.Queue(queue_size)
        self.wants: set[str] = set()
        self.sent = 0      # units sent
        self.dropped = 0   # units dropped because the queue was full
        self.alive = True
        self.sender: threading.Thread | None = None
        self._send_lock = threading.Lock()

    def offer(self, frames: list[bytes]) -> None:
        if not self.alive:
            return
        try:
            self.queue.put_nowait(frames)
        except queue.Full:
            self.dropped += 1

    def send_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)


class StreamServer:
    """See the module docstring. ``hello``: the first message every client gets."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, queue_size: int = 64,
                 hello: Callable[[], dict] | None = None,
                 on_request: Callable[[Client, dict], Unit | None] | None = None) -> None:
        self.host, self.port, self.queue_size = host, int(port), int(queue_size)
        self.hello, self.on_request = hello, on_request
        self.clients: list[Client] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closing = threading.Event()
        self._done_counts = [0, 0]  # sent, dropped of clients that left

    # ------------------------------------------------------------------------------------------
    def start(self) -> int:
        """Listen; returns the port (``port`` 0 picks a free one)."""
        try:
            self._sock = socket.create_server((self.host, self.port), family=_family(self.host), reuse_port=False)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise MICAError(f"port {self.port} on {self.host} is in use (another live run?); pass --port N") from None
            raise MICAError(f"cannot listen on {self.host}:{self.port} ({e.strerror or e}); check --host / --port") from None
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, name="live-accept", daemon=True).start()
        return self.port

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, addr), name="live-client", daemon=True).start()

    def _serve(self, conn: socket.socket, addr) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = Client(conn, addr, self.queue_size)
        try:
            server_handshake(conn, client.rfile)
        except (ConnectionClosed, OSError):
            conn.close()
            return
        if self.hello is not None:
            client.offer([encode_frame(*text(self.hello()))])
        with self._lock:
            self.clients.append(client)
        client.sender = threading.Thread(target=self._send_loop, args=(client,), name="live-send", daemon=True)
        client.sender.start()
        logger.info(f"stream: client {addr[0]}:{addr[1]} connected")
        try:
            while True:
                op, payload = read_message(client.rfile, client.send_raw, mask_replies=False)
                if op == OP_TEXT:
                    self._request(client, payload)
        except (ConnectionClosed, OSError):
            pass
        finally:
            self._drop_client(client)

    def _request(self, client: Client, payload: bytes) -> None:
        try:
            req = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            client.offer([encode_frame(*text({"type": "error", "message": "requests are JSON objects"}))])
            return
        if not isinstance(req, dict):
            return
        if req.get("type") == "subscribe":
            for key in ("vertices", "crops"):
                if key in req:
                    (client.wants.add if req[key] else client.wants.discard)(key)
        reply = self.on_request(client, req) if self.on_request is not None else None
        if reply:
            client.offer([encode_frame(op, data) for op, data in reply])

    def _send_loop(self, client: Client) -> None:
        while client.alive:
            unit = client.queue.get()
            if unit is None:
                break
            try:
                for data in unit:
                    client.send_raw(data)
                client.sent += 1
            except OSError:
                break
        self._drop_client(client)

    def _drop_client(self, client: Client) -> None:
        with self._lock:
            if client not in self.clients:
                return
            self.clients.remove(client)
            self._done_counts[0] += client.sent
            self._done_counts[1] += client.dropped
        client.alive = False
        try:
            client.queue.put_nowait(None)
        except queue.Full:
            pass
        try:
            client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.sock.close()
        logger.info(f"stream: client {client.address[0]}:{client.address[1]} left "
                    f"({client.sent} sent, {client.dropped} dropped)")

    # ------------------------------------------------------------------------------------------
    def wanted(self, key: str) -> bool:
        """Whether a connected client subscribed to ``key`` ("vertices", "crops")."""
        with self._lock:
            return any(key in c.wants for c in self.clients)

    def publish(self, unit: Unit, only: str | None = None) -> None:
        """Queue ``unit`` for every client (with ``only``: those subscribed to it); never blocks."""
        frames = [encode_frame(op, data) for op, data in unit]
        with self._lock:
            clients = list(self.clients)
        for c in clients:
            if only is None or only in c.wants:
                c.offer(frames)

    @property
    def counts(self) -> tuple[int, int, int]:
        """(clients now, units sent, units dropped) over every client of the run."""
        with self._lock:
            return (len(self.clients), self._done_counts[0] + sum(c.sent for c in self.clients),
                    self._done_counts[1] + sum(c.dropped for c in self.clients))

    def close(self, last: Unit | None = None, wait_s: float = 1.0) -> None:
        """Send ``last`` to every client, close them and stop listening."""
        self._closing.set()
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            clients = list(self.clients)
        end = [encode_frame(op, data) for op, data in (last or [])] + [encode_frame(OP_CLOSE, b"\x03\xe8")]
        for c in clients:
            try:
                c.queue.put(end, timeout=wait_s)
                c.queue.put(None, timeout=wait_s)
            except queue.Full:
                c.dropped += 1
        for c in clients:
            if c.sender is not None:
                c.sender.join(wait_s)
            self._drop_client(c)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_host(host: str, allow_remote: bool) -> str:
    """``host`` itself when it is a loopback address or ``allow_remote`` is set; else one line."""
    if host in LOOPBACK or allow_remote:
        return "127.0.0.1" if host == "localhost" else host
    raise MICAError(f"--host {host} would serve the stream beyond this machine; pass --allow-remote to do that "
                    "(anyone who can reach the port gets the tracked parameters and, with --send-crops, the crops)")
