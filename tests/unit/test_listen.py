"""Where the ext_proc service listens: addresses, the socket directory's checks, no shared ports."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ext_proc.server import app, listen
from tests.unix_users import as_other_user, needs_root, open_directory


def test_addresses_parse_and_print_back() -> None:
    assert listen.parse("unix:/run/tollway/ext_proc.sock") == listen.Address("unix", path="/run/tollway/ext_proc.sock")
    assert listen.parse("unix:///run/t.sock").path == "/run/t.sock"
    assert listen.parse("tcp://127.0.0.1:50051") == listen.Address("tcp", host="127.0.0.1", port=50051)
    assert listen.parse("tls://[::1]:8443") == listen.Address("tls", host="::1", port=8443)
    for text in ("unix:/a.sock", "tcp://127.0.0.1:1", "tls://[::1]:8443"):
        assert str(listen.parse(text)) == text
    assert listen.parse("unix:rel/x.sock").path == os.path.abspath("rel/x.sock")


@pytest.mark.parametrize("text", ["127.0.0.1:50051", "tcp://127.0.0.1", "tcp://:80", "tls://h:99999", "unix:@abstract",
                                  "http://x:1", "unix:/" + "d" * 120 + "/x.sock"])
def test_bad_addresses_are_one_clear_line(text: str) -> None:
    with pytest.raises(listen.ListenError) as info:
        listen.parse(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("group", "modes"), [(False, (0o700, 0o600)), (True, (0o750, 0o660))])
def test_the_socket_directory_is_created_private_and_the_socket_the_users_or_its_groups(
        tmp_path: Path, group: bool, modes: tuple[int, int]) -> None:
    old = os.umask(0o022)  # modes are set, not left to the umask
    try:
        listener = listen.bind(listen.parse(f"unix:{tmp_path}/run/ext_proc.sock"), group=group)
    finally:
        os.umask(old)
    try:
        directory = os.lstat(tmp_path / "run")
        assert stat.S_IMODE(directory.st_mode) == modes[0] and directory.st_uid == os.geteuid()
        assert stat.S_IMODE(os.lstat(tmp_path / "run" / "ext_proc.sock").st_mode) == modes[1]
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "run" / "ext_proc.sock"))
    finally:
        listener.close()
    assert not (tmp_path / "run" / "ext_proc.sock").exists()  # removed when the server closes


@pytest.mark.parametrize("mode", [0o777, 0o755, 0o705, 0o770, 0o701])
def test_a_directory_other_users_can_reach_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(listen.ListenError, match="mode"):
        listen.bind(listen.parse(f"unix:{directory}/ext_proc.sock"))
    assert not (directory / "ext_proc.sock").exists()


def test_a_directory_set_up_for_envoy_in_the_group_without_socket_group_is_warned_of(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # An install from before --socket-group: the directory 0750 for an Envoy in Tollway's group,
    # whose connections the 0600 socket now refuses. Said in the log, not found by a failing request.
    directory = tmp_path / "run"
    directory.mkdir()
    directory.chmod(0o750)
    for group, warned in ((True, False), (False, True)):
        caplog.clear()
        listener = listen.bind(listen.parse(f"unix:{directory}/ext_proc.sock"), group=group)
        listener.close()
        assert ("--socket-group" in caplog.text) is warned, caplog.text


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(listen.ListenError, match="symlink"):
        listen.bind(listen.parse(f"unix:{tmp_path}/link/ext_proc.sock"))


@needs_root
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(listen.ListenError, match="belongs to uid 65534"):
        listen.bind(listen.parse(f"unix:{directory}/ext_proc.sock"))


def test_a_live_socket_is_never_shared_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    address = listen.parse(f"unix:{tmp_path}/run/ext_proc.sock")
    first = listen.bind(address)
    try:
        with pytest.raises(listen.ListenError, match="in use"):
            listen.bind(address)
    finally:
        first.sock.close()  # dies without removing its file
    assert (tmp_path / "run" / "ext_proc.sock").exists()
    second = listen.bind(address)  # the stale file is replaced
    second.close()
    (tmp_path / "run" / "ext_proc.sock").write_text("not a socket")
    with pytest.raises(listen.ListenError, match="not a socket"):
        listen.bind(address)


def test_a_tcp_listener_cannot_be_joined_by_another_socket() -> None:
    listener = listen.bind(listen.parse("tcp://127.0.0.1:0"))
    port = listener.sock.getsockname()[1]
    try:
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        with socket.socket() as thief:
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError) as info:
                thief.bind(("127.0.0.1", port))
            assert info.value.errno == errno.EADDRINUSE
        with pytest.raises(listen.ListenError, match="port is taken"):
            listen.bind(listen.parse(f"tcp://127.0.0.1:{port}"))
    finally:
        listener.close()


@needs_root
def test_another_user_can_neither_connect_nor_replace_the_socket() -> None:
    with open_directory() as parent:  # the way to the directory is open: only its own mode keeps others out
        _attack_the_socket(parent / "run" / "ext_proc.sock")


@needs_root
def test_a_member_of_tollways_group_connects_only_when_envoy_needs_the_group() -> None:
    """tollway up runs Envoy as Tollway's user: another user who shares its group (macOS: everyone is in
    staff) must not get a stream, and the provider keys with it. In a pod (--socket-group) Envoy is that
    group member."""

    def connect() -> int:
        with socket.socket(socket.AF_UNIX) as client:
            try:
                client.connect(str(path))
            except OSError as exc:
                return exc.errno or -1
        return 0

    member = (os.getegid(),)
    for group, expected in ((False, errno.EACCES), (True, 0)):
        with open_directory() as parent:
            path = parent / "run" / "ext_proc.sock"
            listener = listen.bind(listen.parse(f"unix:{path}"), group=group)
            try:
                assert as_other_user(connect) == errno.EACCES  # not in the group: never
                assert as_other_user(connect, groups=member) == expected, group
            finally:
                listener.close()


def _attack_the_socket(path: Path) -> None:
    listener = listen.bind(listen.parse(f"unix:{path}"))
    try:
        def attack() -> dict[str, int]:
            outcome = {}
            with socket.socket(socket.AF_UNIX) as client:
                try:
                    client.connect(str(path))
                    outcome["connect"] = 0
                except OSError as exc:
                    outcome["connect"] = exc.errno or -1
            with socket.socket(socket.AF_UNIX) as rogue:
                try:
                    rogue.bind(str(path.parent / "rogue.sock"))
                    outcome["bind"] = 0
                except OSError as exc:
                    outcome["bind"] = exc.errno or -1
            try:
                os.unlink(path)
                outcome["unlink"] = 0
            except OSError as exc:
                outcome["unlink"] = exc.errno or -1
            return outcome

        assert as_other_user(attack) == {"connect": errno.EACCES, "bind": errno.EACCES, "unlink": errno.EACCES}
        assert path.exists()
        # The control: with the directory opened up, the same attack connects and replaces the socket.
        path.parent.chmod(0o777)
        path.chmod(0o666)
        assert as_other_user(attack) == {"connect": 0, "bind": 0, "unlink": 0}
    finally:
        listener.close()


# -- trusted relays (--tls-relay-san) -------------------------------------------------------------


def test_a_relay_certificate_is_told_from_a_workloads(tmp_path: Path) -> None:
    from tests.certs import CA

    ca = CA(tmp_path, "mesh")
    server = ca.issue("tollway", dns=("tollway.svc",), server=True)
    gateway = ca.issue("gateway", dns=("gateway.platform.svc",), uris=("spiffe://cluster.local/ns/platform/sa/gw",),
                       server=False)
    pod = ca.issue("pod", uris=("spiffe://cluster.local/ns/app/sa/app",), server=False)

    def identify(cert: Path, *relays: str) -> listen.Peer:
        files = listen.TLSFiles(str(server.cert), str(server.key), str(ca.cert), ("spiffe://cluster.local/*",), relays)
        return listen.TLSContext(files).identify(ssl._ssl._test_decode_cert(str(cert)))  # type: ignore[attr-defined]

    # Default: no relay; every certificate is only the workload it names.
    assert identify(gateway.cert) == listen.Peer("spiffe://cluster.local/ns/platform/sa/gw", relay=False)
    for relay in ("spiffe://cluster.local/ns/platform/sa/gw", "spiffe://cluster.local/ns/platform/*",
                  "gateway.platform.svc"):
        assert identify(gateway.cert, relay).relay, relay
        assert identify(pod.cert, relay) == listen.Peer("spiffe://cluster.local/ns/app/sa/app", relay=False), relay
    assert not identify(gateway.cert, "spiffe://cluster.local/ns/platform/sa/g").relay  # exact, not a prefix
    assert listen.certificate_names(str(gateway.cert)) == ["spiffe://cluster.local/ns/platform/sa/gw",
                                                           "gateway.platform.svc"]
    assert listen.certificate_names(str(tmp_path / "missing.pem")) == []


@pytest.mark.parametrize(("relay", "clients", "ok"), [
    ("spiffe://td/ns/gw/sa/envoy", (), True),  # every certificate the CA signed is a client
    ("spiffe://td/ns/gw/sa/envoy", ("spiffe://td/ns/gw/sa/envoy",), True),
    ("spiffe://td/ns/gw/sa/envoy", ("spiffe://td/*",), True),
    ("spiffe://td/ns/gw/*", ("spiffe://td/ns/*",), True),
    ("spiffe://td/ns/gw/*", ("spiffe://td/ns/gw/*",), True),
    ("spiffe://td/ns/gw/sa/envoy", ("spiffe://td/ns/app/*",), False),
    ("spiffe://td/ns/gw/*", ("spiffe://td/ns/gw/sa/envoy",), False),  # the pattern names more than is admitted
    ("gateway.svc", ("spiffe://td/*",), False),
])
def test_a_relay_name_the_client_names_do_not_accept_is_an_error_at_start(
        relay: str, clients: tuple[str, ...], ok: bool) -> None:
    files = listen.TLSFiles("c.pem", "k.pem", "ca.pem", clients, (relay,))
    if ok:
        files.check()
        return
    with pytest.raises(listen.ListenError) as caught:
        files.check()
    assert "\n" not in str(caught.value) and "--tls-relay-san " + relay in str(caught.value)
    # tollway serve reads the flags into the same check (and any --tls-* without tls:// is refused).
    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    flags = ["--listen", "tls://127.0.0.1:1", "--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca",
             "--tls-relay-san", relay, *(f"--tls-client-san={san}" for san in clients)]
    args = parser.parse_args(flags)
    with pytest.raises(listen.ListenError, match="--tls-relay-san"):
        app._tls_files(args, listen.parse(args.listen))
    args = parser.parse_args(["--listen", "tcp://127.0.0.1:1", "--tls-relay-san", relay])
    with pytest.raises(listen.ListenError, match="need a tls://"):
        app._tls_files(args, listen.parse(args.listen))


def test_tollway_serve_refuses_a_relay_its_client_names_do_not_admit_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "serve", "--listen", "tls://127.0.0.1:1", "--tls-cert", "c",
         "--tls-key", "k", "--tls-client-ca", "ca", "--tls-client-san", "spiffe://td/ns/app/*",
         "--tls-relay-san", "spiffe://td/ns/gw/sa/envoy"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == ("tollway serve: --tls-relay-san spiffe://td/ns/gw/sa/envoy is not accepted by "
                           "--tls-client-san spiffe://td/ns/app/*: a relay must be a client Tollway admits\n")


@pytest.mark.parametrize(("command", "flag", "value"), [
    ("serve", "--admin-port", "75537"), ("serve", "--admin-port", "-1"), ("serve", "--admin-port", "x"),
    ("mock-provider", "--port", "99999"), ("mock-provider", "--port", "65536"),
    ("up", "--port", "99999"), ("up", "--service-admin-port", "70000"), ("up", "--mock-port", "-5"),
])
def test_a_port_flag_takes_0_to_65535(capsys: pytest.CaptureFixture[str], command: str, flag: str,
                                      value: str) -> None:
    """--admin-port 75537 was an OverflowError's traceback; mock-provider --port 99999 listened on 34463."""
    from ext_proc import cli
    with pytest.raises(SystemExit) as failed:
        cli.main([command, flag, value])
    assert failed.value.code == 2 and "must be a port number from 0 to 65535" in capsys.readouterr().err
    assert [listen.port(text) for text in ("0", "9902", "65535")] == [0, 9902, 65535]


def test_several_workers_serve_beside_a_socket_whose_directory_leaves_no_room_for_the_state_socket(
        tmp_path: Path) -> None:
    """The node's state socket went beside the ext_proc socket: with a short socket name in a deep
    directory (the ext_proc socket's path fits, ``state.sock`` beside it does not) the service did
    not start with several workers. It now goes to a private directory of its own."""
    import signal
    import time
    directory = tmp_path / ("d" * max(1, listen.UNIX_PATH_MAX - len(str(tmp_path)) - len("/state.sock") + 3))
    directory.mkdir(mode=0o700)
    sock = directory / "t.sock"
    assert len(str(sock)) <= listen.UNIX_PATH_MAX < len(str(directory / "state.sock"))
    serve = subprocess.Popen([sys.executable, "-m", "ext_proc.cli", "serve", "--listen", f"unix:{sock}",
                              "--workers", "2", "--admin-port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and serve.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(6)  # (the node state server starts after the socket: its failure took 5 s to say)
        assert serve.poll() is None, serve.stderr.read() if serve.stderr else ""
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=30)
    assert "did not start" not in err and "Traceback" not in err, err
