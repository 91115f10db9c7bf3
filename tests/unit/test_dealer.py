"""The supervisor's dealer: real sockets, the worker side played by the test."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from ext_proc.server.dealer import CLOSED, SHED, Dealer


def received(channel: socket.socket, timeout: float = 2.0) -> tuple[bytes, list[int]]:
    channel.settimeout(timeout)
    message, fds, _flags, _address = socket.recv_fds(channel, 256, 16)
    return message, fds


def listener(path: str) -> socket.socket:
    """The Unix socket Envoy connects to, listening (what the supervisor hands the dealer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    return sock


def wait(condition: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_connections_go_to_the_worker_with_fewest_and_a_dead_one_gets_none(tmp_path: Path) -> None:
    path = str(tmp_path / "ext_proc.sock")
    listening = listener(path)
    dealer = Dealer(listening, 2)
    workers = [dealer.channel(0), dealer.channel(1)]
    dealer.start()
    clients = []
    try:
        got: list[list[socket.socket]] = [[], []]

        def connect_and_find() -> int:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(path)
            clients.append(client)
            for i, worker in enumerate(workers):
                if worker.fileno() == -1:
                    continue  # closed: a dead worker
                try:
                    message, fds = received(worker, 0.2)
                except TimeoutError:
                    continue
                assert message == b"c" and len(fds) == 1
                got[i].append(socket.socket(fileno=fds[0]))
                return i
            raise AssertionError("no worker was dealt the connection")

        # In turn while equal: 0, 1, 0, 1.
        assert [connect_and_find() for _ in range(4)] == [0, 1, 0, 1]
        wait(lambda: dealer.counts == [2, 2])
        # The dealt socket is the client's connection.
        clients[0].sendall(b"ping")
        assert got[0][0].recv(4) == b"ping"
        # Worker 1 reports two closes: it now holds fewest and gets the next two.
        workers[1].sendall(CLOSED * 2)
        wait(lambda: dealer.counts == [2, 0])
        assert [connect_and_find() for _ in range(2)] == [1, 1]
        wait(lambda: dealer.counts == [2, 2])
        # Worker 0 dies (its channel closes): everything goes to worker 1.
        workers[0].close()
        wait(lambda: dealer.channels[0] is None)
        assert [connect_and_find() for _ in range(3)] == [1, 1, 1]
        wait(lambda: dealer.counts == [0, 5])

        # A replacement for worker 0 joins: worker 1 is asked to send away what is above an even
        # share (5 held, 3 each rounded up: 2).
        workers[0] = dealer.channel(0)
        message, fds = received(workers[1])
        assert message == SHED * 2 and not fds
        workers[1].sendall(CLOSED * 2)
        wait(lambda: dealer.counts == [0, 3])
        assert [connect_and_find() for _ in range(2)] == [0, 0]
    finally:
        dealer.stop()
        for sock in [*clients, *workers, listening]:
            sock.close()


def test_connections_wait_while_no_worker_is_alive(tmp_path: Path) -> None:
    path = str(tmp_path / "ext_proc.sock")
    listening = listener(path)
    dealer = Dealer(listening, 1)
    dealer.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
        wait(lambda: len(dealer.pending) == 1)
        worker = dealer.channel(0)
        message, fds = received(worker)
        assert message == b"c" and len(fds) == 1
        wait(lambda: not dealer.pending)
        socket.socket(fileno=fds[0]).close()
        worker.close()
    finally:
        dealer.stop()
        client.close()
        listening.close()
