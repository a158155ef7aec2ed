"""A small threaded TCP proxy that puts faults between a client and a server:
a slow connect, a network that stops answering, connections dropped at once.

    with TcpProxy("127.0.0.1", server.port, connect_delay=0.15) as proxy:
        psycopg2.connect(host="127.0.0.1", port=proxy.port, ...)

One thread accepts; each client gets one thread that waits ``connect_delay``,
opens the upstream connection and then copies bytes both ways. ``blackhole()``
stops the copying without closing anything (the bytes wait in the kernel's
buffers, as on a network that went silent) and ``resume()`` lets them through.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType

_CHUNK = 65536
# How often an idle or blackholed link thread looks at the proxy's flags.
_POLL_SECONDS = 0.05


class _Link:
    """One client connection and its upstream twin, owned by one thread."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        # Held while bytes are being copied, so blackhole() can wait for a copy in flight.
        self.copying = threading.Lock()
        self.dropped = threading.Event()

    def shutdown(self) -> None:
        """Cut both sockets; the link's thread notices and closes them."""
        self.dropped.set()
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):  # already disconnected
                    sock.shutdown(socket.SHUT_RDWR)


class TcpProxy:
    """Forward connections made to ``127.0.0.1:proxy.port`` to the target.

    ``connect_delay`` (seconds) holds every new client connection that long
    before the upstream connection is even opened, as a slow network or a
    slow authentication would.
    """

    def __init__(self, target_host: str, target_port: int, *, connect_delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.connect_delay = connect_delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._acceptor: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> TcpProxy:
        """Start accepting connections (returns the proxy, for chaining)."""
        if self._acceptor is None:
            self._acceptor = threading.Thread(
                target=self._accept_loop, name=f"tcpproxy-{self.port}", daemon=True
            )
            self._acceptor.start()
        return self

    def close(self) -> None:
        """Stop accepting, drop every connection and wait for the threads to end."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._flowing.set()  # wake blackholed links so they can exit
        # Closing a listening socket does not wake accept() on Linux: shut it down too.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.drop_all()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        for thread in list(self._threads):
            thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults ----------------------------------------------------------------

    def blackhole(self) -> None:
        """Stop forwarding bytes both ways; sockets stay open. Effective on return."""
        self._flowing.clear()
        for link in self._snapshot():
            with link.copying:  # a copy that had already started is finished
                pass

    def resume(self) -> None:
        """Forward again, including whatever was sent while blackholed."""
        self._flowing.set()

    def drop_all(self) -> None:
        """Close every current client connection (and its upstream connection)."""
        for link in self._snapshot():
            link.shutdown()

    @property
    def connection_count(self) -> int:
        """The number of client connections currently open through the proxy."""
        with self._lock:
            return len(self._links)

    # -- internals -------------------------------------------------------------

    def _snapshot(self) -> list[_Link]:
        with self._lock:
            return list(self._links)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client)
            with self._lock:
                self._links.add(link)
                self._threads = [t for t in self._threads if t.is_alive()]
                thread = threading.Thread(
                    target=self._serve, args=(link,), name=f"tcpproxy-{self.port}-link", daemon=True
                )
                self._threads.append(thread)
            thread.start()

    def _serve(self, link: _Link) -> None:
        try:
            if self.connect_delay and link.dropped.wait(self.connect_delay):
                return
            try:
                link.upstream = socket.create_connection(self.target)
            except OSError:
                return  # the server is down: the client sees its connection closed
            link.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if link.dropped.is_set():
                return
            self._copy(link, link.upstream)
        finally:
            with self._lock:
                self._links.discard(link)
            for sock in (link.client, link.upstream):
                if sock is not None:
                    sock.close()

    def _copy(self, link: _Link, upstream: socket.socket) -> None:
        peer = {link.client: upstream, upstream: link.client}
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                selector.register(sock, selectors.EVENT_READ)
            while not link.dropped.is_set():
                if not self._flowing.is_set():
                    self._flowing.wait(_POLL_SECONDS)
                    continue
                ready = selector.select(_POLL_SECONDS)
                for key, _ in ready:
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    with link.copying:
                        if not self._flowing.is_set():
                            break  # blackholed meanwhile: leave the bytes where they are
                        try:
                            data = source.recv(_CHUNK)
                            if data:
                                peer[source].sendall(data)
                        except OSError:
                            data = b""
                    if not data:
                        return  # one side closed or failed: end the link
