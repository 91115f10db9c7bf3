"""The injector's webhook server: AdmissionReviews over HTTPS, answered by :func:`~.inject.review`.

A thread per connection (:class:`http.server.ThreadingHTTPServer`), bounded: the webhook fails
closed (``failurePolicy: Fail``), so connections that send nothing, or a request slowly, must
not take every thread and the memory with them. A request has :data:`READ_TIMEOUT` in all (the
TLS handshake and the wait for it included, not per read), a body :data:`MAX_REVIEW` at most,
and :data:`MAX_CONNECTIONS` are open at once. The serving certificate is re-read when
cert-manager renews it (:class:`ReloadingContext`). IPv6 when the host is; ``[::]`` is dual-stack
(IPv4 too), or IPv4 alone on a host without IPv6.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from ext_proc.k8s.inject import Settings, review

log = logging.getLogger("tollway.inject")


class ReloadingContext:
    """A server SSLContext whose certificate is re-read when its files change (cert-manager renewals)."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._signature: tuple[int, ...] = ()
        self.refresh()

    def refresh(self) -> bool:
        stats = [os.stat(path) for path in (self.cert, self.key)]
        signature = tuple(value for s in stats for value in (s.st_mtime_ns, s.st_ino))
        if signature == self._signature:
            return False
        self.context.load_cert_chain(self.cert, self.key)
        self._signature = signature
        return True


def _follow(tls: ReloadingContext, interval: float = 5.0) -> None:
    """Re-read the certificate when cert-manager renews it (new handshakes use it)."""
    while True:
        time.sleep(interval)
        try:
            if tls.refresh():
                log.info("webhook certificate reloaded")
        except (OSError, ssl.SSLError) as exc:
            log.error("new webhook certificate rejected, keeping the previous one: %s", exc)


MAX_REVIEW = 4 * 1024 * 1024  # bytes: the API server sends at most 3 MiB objects (its request limit)
READ_TIMEOUT = 10.0  # seconds a connection may take to send a request (the API server's own timeout)
MAX_CONNECTIONS = 64  # open at once; past them a new connection is closed at once


def ipv6_available() -> bool:
    """Whether an IPv6 socket can be made (not on a kernel booted with ipv6.disable=1)."""
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


class _Server(http.server.ThreadingHTTPServer):
    """A thread per connection, at most :data:`MAX_CONNECTIONS` of them, IPv6 when the host is.
    The webhook fails closed (``failurePolicy: Fail``): connections that send nothing, or a body
    slowly, must not be able to take every thread and the memory with them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            if address[0] == "::" and not ipv6_available():
                # [::] (the manifest's): every address, so IPv4's on a node booted without IPv6.
                log.warning("no IPv6 on this host: listening on 0.0.0.0 (IPv4) instead of [::]")
                address = ("0.0.0.0", address[1])
            else:
                self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # [::] is dual-stack: IPv4 too (as ::ffff:a.b.c.d), whatever net.ipv6.bindv6only says.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(settings: Settings, host: str, port: int, tls: ReloadingContext | None,
          started: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> None:
    """Answer AdmissionReviews on ``POST /inject`` (and ``GET /healthz``) until interrupted (or
    until ``stop`` is set)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = READ_TIMEOUT  # on the socket: a read (the TLS handshake's too) that waits longer ends it

        def setup(self) -> None:
            super().setup()
            self._deadline: threading.Timer | None = None
            self._arm()

        def _arm(self) -> None:
            """READ_TIMEOUT for the whole of the next request (the handshake, or waiting for it,
            included), not per read: a client sending a byte now and then is cut at its end."""
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = threading.Timer(READ_TIMEOUT, self._expire)
            self._deadline.daemon = True
            self._deadline.start()

        def _expire(self) -> None:
            with contextlib.suppress(OSError):
                # The plain socket's shutdown: the TLS wrapper's would drop its state first, and a
                # response being written in that moment could leave unencrypted.
                socket.socket.shutdown(self.connection, socket.SHUT_RDWR)

        def finish(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().finish()

        def log_message(self, fmt: str, *args: object) -> None:  # requests are logged by review()
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self._arm()  # the next request on this connection has its own time

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/inject":
                self._send(404, b"not found\n", "text/plain")
                return
            try:
                length = int(self.headers.get("content-length") or 0)
            except ValueError:
                length = 0
            if not 0 < length <= MAX_REVIEW:
                self.close_connection = True
                self._send(400 if length <= 0 else 413, b'{"error": "an AdmissionReview body (at most 4 MiB) is '
                                                         b'required"}')
                return
            data = self.rfile.read(length)
            if self._deadline is not None:  # read in time: its answer is never cut (re-armed once sent)
                self._deadline.cancel()
            try:
                body = json.loads(data)
                answer = review(body, settings)
            except (ValueError, AttributeError, TypeError, RecursionError) as exc:
                self._send(400, json.dumps({"error": f"not an AdmissionReview: {exc}"}).encode())
                return
            self._send(200, json.dumps(answer).encode())

    server = _Server((host, port), Handler)
    if tls is not None:
        accept = server.get_request

        def get_request() -> tuple[Any, Any]:
            # The handshake happens in the request's thread (first read), never in the accepting one.
            sock, address = accept()
            return tls.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

        server.get_request = get_request  # type: ignore[method-assign]
        threading.Thread(target=_follow, args=(tls,), name="tollway-inject-tls", daemon=True).start()
    if stop is not None:
        def stopping() -> None:
            stop.wait()
            server.shutdown()

        threading.Thread(target=stopping, name="tollway-inject-stop", daemon=True).start()
    if started is not None:
        started(server.server_address[1])
    log.info("tollway inject webhook listening on %s:%d (%s)", host, server.server_address[1],
             "https" if tls else "http")
    try:
        server.serve_forever()
    finally:
        server.server_close()
