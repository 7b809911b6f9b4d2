"""A loopback TCP relay that adds a known one-way delay, so tests can make a slow network path.

netem does not work on this machine, so tests that need "the broker is 20 ms away" put this
between the client and the real service::

    with Relay("127.0.0.1", 5672, delay_s=0.020) as relay:
        url = f"amqp://guest:guest@127.0.0.1:{relay.port}//"

Every chunk is held ``delay_s`` in EACH direction (client→server and server→client), so a request
and its reply see ``2 * delay_s`` more round-trip time. Delays are measured from when the chunk
was read, not cumulative, so a burst does not pile up delay the way a bandwidth limit would.

Bounded: listens on 127.0.0.1 only, at most ``max_connections`` at a time (further ones are
closed at once), daemon threads, and ``close()`` (or leaving the ``with``) shuts every socket.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
import time
from types import TracebackType

_CHUNK = 65536
_POLL_S = 0.2  # how often idle threads look at the stop flag


class Relay:
    """``Relay(target_host, target_port, delay_s)``: a context manager exposing ``.port``."""

    def __init__(self, target_host: str, target_port: int, delay_s: float,
                 max_connections: int = 32) -> None:
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.max_connections = max_connections
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(_POLL_S)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0  # accepted so far (tests can check the relay was really used)

    def __enter__(self) -> Relay:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        _quiet_close(self._listener)
        with self._lock:
            sockets = list(self._sockets)
        self._forget(*sockets)
        for thread in self._threads:
            thread.join(timeout=2 * _POLL_S + self.delay_s + 1)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                full = len(self._sockets) >= 2 * self.max_connections
            if full:
                _quiet_close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _quiet_close(client)  # the client sees the same refusal it would without us
                continue
            self.connections += 1
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)  # blocking: a slow reader must slow sendall, not break it
                with self._lock:
                    self._sockets.add(sock)
            self._pipe(client, server)
            self._pipe(server, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        """Reader stamps each chunk with its due time; writer sends it when due (order kept)."""
        held: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self._spawn(self._read, src, dst, held)
        self._spawn(self._write, src, dst, held)

    def _read(self, src: socket.socket, dst: socket.socket, held: queue.Queue[tuple[float, bytes]]) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([src], [], [], _POLL_S)
                if not ready:
                    continue
                data = src.recv(_CHUNK)
            except (OSError, ValueError):  # ValueError: select on a socket closed meanwhile
                data = b""
            held.put((time.monotonic() + self.delay_s, data))
            if not data:
                return

    def _write(self, src: socket.socket, dst: socket.socket, held: queue.Queue[tuple[float, bytes]]) -> None:
        while not self._stop.is_set():
            try:
                due, data = held.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:  # the source closed: pass the close on, after the same delay
                self._forget(src, dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                self._forget(src, dst)
                return

    def _forget(self, *socks: socket.socket) -> None:
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            _quiet_close(sock)
            with self._lock:
                self._sockets.discard(sock)


def _quiet_close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
