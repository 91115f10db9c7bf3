"""Where the ext_proc service listens, and the checks that keep every other process out.

Theory of operation. Tollway's answers to Envoy carry the providers' API keys (the server adds
them to the request headers it hands back), so whoever can open a stream to the service can
read the keys, and whoever can take over its address receives Envoy's streams. The channel must
therefore be reachable by Envoy and by nothing else:

``unix:/run/tollway/ext_proc.sock`` (the default)
    A Unix domain socket in a directory that only Envoy and Tollway share. Connecting needs
    search permission on the directory and write permission on the socket, so their modes
    decide who gets in. By default Envoy runs as Tollway's user (``tollway up``): Tollway
    creates the directory with mode 0700 when it is missing and the socket is mode 0600, so no
    other user connects, not even one of Tollway's group (on macOS every user is in ``staff``).
    With ``group=True`` (``tollway serve --socket-group``, what the injected sidecar runs) Envoy
    is another user of Tollway's group (in a pod: the containers' ``runAsGroup``), and they are
    0750 and 0660. Either way Tollway refuses to listen when the directory is a symlink, is not
    owned by Tollway's user, or lets other users in (any "other" bit) or lets its group write
    (group members could swap the socket). A socket file left behind by a dead server is
    replaced; one a live server still answers on is an error, never shared. In a pod the
    directory is a volume mounted into the Envoy and Tollway containers only.
``tls://HOST:PORT`` with ``--tls-cert``, ``--tls-key`` and ``--tls-client-ca``
    Mutual TLS over TCP, for Tollway run as a shared Deployment that many Envoys reach over the
    network: a client must present a certificate signed by the client CA (optionally with one of
    the ``--tls-client-san`` names), TLS 1.2 or newer, ALPN ``h2``. The certificate's SPIFFE ID
    (:func:`spiffe_id`) is the identity of the workload whose Envoy called: in a mesh each
    sidecar presents its own workload's certificate. A certificate with one of the
    ``--tls-relay-san`` names is a trusted relay instead (:class:`Peer`): an Envoy the platform
    team runs itself, a central gateway whose callers use Tollway keys, believed as the Unix
    socket's Envoy is. The certificate and key are re-read when their files change (cert-manager
    rotation needs no restart).
``tcp://HOST:PORT``
    Plain TCP, only when asked for: any process that can reach the port can read provider keys.

Every worker process serves the one listening socket the parent bound (inherited, never
re-bound), and TCP sockets are bound without ``SO_REUSEPORT``: no other process, even of the
same user, can bind the same address and receive a share of Envoy's connections.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("tollway.listen")

DEFAULT = "unix:/run/tollway/ext_proc.sock"
SOCKET_MODE = {False: 0o600, True: 0o660}  # by whether Envoy is another user of Tollway's group
DIRECTORY_MODE = {False: 0o700, True: 0o750}
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL


class ListenError(Exception):
    """The service cannot listen safely where it was asked to; the message is one line for a person."""


@dataclass(frozen=True)
class Address:
    """A parsed ``--listen`` value."""

    kind: str  # "unix" | "tcp" | "tls"
    path: str = ""  # unix
    host: str = ""  # tcp, tls
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind}://{host}:{self.port}"


def port(text: str) -> int:
    """A port flag's value (an argparse type: ``--admin-port``, ``--port``): a number from 0 to 65535
    (a larger one made a bind fail with a traceback, or silently listen elsewhere: 99999 on 34463)."""
    if not text.strip().isascii() or not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, not {text!r}")
    return int(text)


def parse(text: str) -> Address:
    """``unix:PATH``, ``tcp://HOST:PORT`` or ``tls://HOST:PORT``; :class:`ListenError` otherwise."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if path.startswith("@") or "\0" in path:
            raise ListenError("abstract Unix sockets have no permissions: give a path in a private directory")
        if not path.startswith("/"):
            path = os.path.abspath(path)
        if len(path.encode()) > UNIX_PATH_MAX:
            raise ListenError(f"the socket path is {len(path.encode())} bytes, more than a Unix socket allows "
                              f"({UNIX_PATH_MAX}): choose a shorter directory")
        return Address("unix", path=path)
    for kind in ("tcp", "tls"):
        if text.startswith(kind + "://"):
            rest = text[len(kind) + 3:]
            host, sep, port = rest.rpartition(":")
            host = host.strip("[]")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ListenError(f"expected {kind}://HOST:PORT, got {text!r}")
            return Address(kind, host=host, port=int(port))
    raise ListenError(f"expected unix:PATH, tcp://HOST:PORT or tls://HOST:PORT, got {text!r}")


def check_directory(directory: str, group: bool = False) -> None:
    """Create the socket's directory if missing (mode 0700, or 0750 for ``group``); refuse one other users
    can reach."""
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        try:
            os.makedirs(os.path.dirname(directory) or "/", exist_ok=True)
            os.mkdir(directory, DIRECTORY_MODE[group])
            os.chmod(directory, DIRECTORY_MODE[group])  # mkdir's mode is masked by the umask
        except OSError as exc:
            raise ListenError(f"cannot create the socket directory {directory}: {exc.strerror}") from None
        info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        raise ListenError(f"the socket directory {directory} is a symlink: give its real path")
    if not stat.S_ISDIR(info.st_mode):
        raise ListenError(f"{directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise ListenError(f"the socket directory {directory} belongs to uid {info.st_uid}, not to Tollway's "
                          f"user (uid {os.geteuid()}): another user could replace the socket")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o027:
        raise ListenError(f"the socket directory {directory} has mode {mode:04o}: other users (or group "
                          f"members, by writing) could reach the provider keys; chmod 0700 (0750 for Envoy "
                          f"in Tollway's group)")
    if mode & 0o050 and not group:  # set up for Envoy in Tollway's group, as before --socket-group
        log.warning("the socket directory %s lets its group in (mode %04o), but the socket is for Tollway's "
                    "user only (0600): an Envoy running as another user of the group cannot connect. Give "
                    "--socket-group if it does, else chmod 0700 %s", directory, mode, directory)


def _live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


@dataclass
class Listener:
    """A bound, listening socket and what is needed to remove it again."""

    address: Address
    sock: socket.socket
    inode: int = 0  # of the Unix socket file we created, so we never remove another server's

    def close(self) -> None:
        """Close the socket and remove the Unix socket file if it is still the one we made."""
        self.sock.close()
        if self.address.kind == "unix":
            with contextlib.suppress(OSError):
                if os.lstat(self.address.path).st_ino == self.inode:
                    os.unlink(self.address.path)


def bind(address: Address, backlog: int = 1024, group: bool = False) -> Listener:
    """A listening, non-blocking socket for ``address``, after the checks above; a Unix socket is for Tollway's
    user only, or also for its group (``group``: Envoy is another user of that group)."""
    inode = 0
    if address.kind == "unix":
        path = address.path
        check_directory(os.path.dirname(path), group)
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(path)
            if not stat.S_ISSOCK(info.st_mode):
                raise ListenError(f"{path} exists and is not a socket")
            if _live(path):
                raise ListenError(f"{path} is in use: another Tollway is listening on it")
            os.unlink(path)  # left behind by a server that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, SOCKET_MODE[group])
            inode = os.lstat(path).st_ino
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise ListenError(f"cannot listen on {path}: {exc.strerror}") from None
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # SO_REUSEADDR only lets us rebind over TIME_WAIT; it never lets another socket share a
            # listening address on Linux (that is SO_REUSEPORT, deliberately not set).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted connections inherit it: the kernel probes a peer silent for two hours (the
            # h2 server's keepalive PING finds a dead Envoy sooner; this covers grpcio's server too).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.bind((address.host, address.port))
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            reason = "the port is taken" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ListenError(f"cannot listen on {address}: {reason}") from None
    sock.setblocking(False)
    return Listener(address, sock, inode)


@dataclass(frozen=True)
class TLSFiles:
    """The server certificate, its key and the CA that signs Envoy's client certificates."""

    cert: str
    key: str
    client_ca: str
    client_sans: tuple[str, ...] = ()  # accepted SANs of the client certificate (any when empty)
    relay_sans: tuple[str, ...] = ()  # SANs of trusted relays' certificates (see Peer); none by default

    def check(self) -> None:
        """A ListenError (one line) when a relay name is one the client names do not all accept."""
        for relay in self.relay_sans:
            if not accepted(relay, self.client_sans):
                raise ListenError(f"--tls-relay-san {relay} is not accepted by --tls-client-san "
                                  f"{' '.join(self.client_sans)}: a relay must be a client Tollway admits")


@dataclass(frozen=True, slots=True)
class Peer:
    """Who opened a connection on a mutual-TLS listener, from its verified client certificate.

    ``spiffe_id``: the certificate's SPIFFE ID (:func:`spiffe_id`), the workload whose Envoy called.
    ``relay``: the certificate has a ``--tls-relay-san`` name, an Envoy the platform team runs
    itself (a central gateway whose callers use Tollway keys): its streams are believed as the Unix
    socket's Envoy is (the message's SPIFFE attribute and a fallback try's metadata are its word).
    Any other certificate may only be the workload it names.
    """

    spiffe_id: str | None
    relay: bool = False


class TLSContext:
    """A server ``SSLContext`` requiring client certificates, re-read when its files change."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._signature: tuple[tuple[int, int], ...] = ()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])
        self.refresh()

    def _stat(self) -> tuple[tuple[int, int], ...]:
        out = []
        for path in (self.files.cert, self.files.key, self.files.client_ca):
            try:
                info = os.stat(path)
            except OSError as exc:
                raise ListenError(f"cannot read {path}: {exc.strerror}") from None
            out.append((info.st_mtime_ns, info.st_ino))
        return tuple(out)

    def refresh(self) -> bool:
        """Load the files if they changed; True when new ones were loaded. A bad new set keeps the old."""
        signature = self._stat()
        if signature == self._signature:
            return False
        try:
            self.context.load_cert_chain(self.files.cert, self.files.key)
            self.context.load_verify_locations(cafile=self.files.client_ca)
        except (ssl.SSLError, OSError) as exc:
            if not self._signature:
                raise ListenError(f"cannot load the TLS certificate, key or client CA: {exc}") from None
            log.error("new TLS files rejected, keeping the previous ones: %s", exc)
            self._signature = signature
            return False
        self._signature = signature
        return True

    def peer_allowed(self, peer: Any) -> bool:
        """Whether a verified client certificate (``getpeercert()``) carries an accepted SAN (any, when none
        are set). An accepted name ending in ``*`` accepts every name it begins (``spiffe://cluster.local/ns/*``:
        any workload of the trust domain)."""
        return not self.files.client_sans or _carries(peer, self.files.client_sans)

    def identify(self, peer: Any) -> Peer:
        """The :class:`Peer` a verified client certificate (``getpeercert()``) names."""
        return Peer(spiffe_id(peer), bool(self.files.relay_sans) and _carries(peer, self.files.relay_sans))


def _carries(peer: Any, sans: tuple[str, ...]) -> bool:
    """Whether a certificate (``getpeercert()``) has a DNS or URI SAN that one of ``sans`` names (``*``: prefix)."""
    if not isinstance(peer, dict):
        return False
    names = {value for kind, value in peer.get("subjectAltName", ()) if kind in ("DNS", "URI")}
    exact = {san for san in sans if not san.endswith("*")}
    prefixes = tuple(san[:-1] for san in sans if san.endswith("*"))
    return bool(names & exact) or any(name.startswith(prefixes) for name in names if prefixes)


def accepted(name: str, sans: tuple[str, ...]) -> bool:
    """Whether every SAN the pattern ``name`` matches (a name, or a prefix ending in ``*``) is one of
    ``sans`` accepts (all are when ``sans`` is empty)."""
    if not sans or name in sans:
        return True
    stem = name[:-1] if name.endswith("*") else name
    return any(san.endswith("*") and stem.startswith(san[:-1]) for san in sans)


def certificate_names(path: str) -> list[str]:
    """The DNS and URI SANs of the PEM certificate at ``path``, its SPIFFE ID first; [] when it cannot
    be read (a hint only: the ``ssl`` module's decoder, which CPython's own tests use)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    try:
        decoded = decode(path) if decode is not None else {}
    except (OSError, ValueError, ssl.SSLError):
        return []
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    return sorted(names, key=lambda name: not name.startswith("spiffe://"))


def spiffe_id(peer: Any) -> str | None:
    """The SPIFFE ID of a verified client certificate (``getpeercert()``): its one ``spiffe://`` URI SAN.

    On a mutual-TLS listener this names the workload whose Envoy called (in a mesh, the sidecar
    presents its workload's certificate), so Tollway identifies that stream's requests by it. A
    certificate with none, or with several (the SPIFFE X.509-SVID format allows exactly one), names
    nobody.
    """
    if not isinstance(peer, dict):
        return None
    ids = [value for kind, value in peer.get("subjectAltName", ()) if kind == "URI" and value.startswith("spiffe://")]
    return ids[0] if len(ids) == 1 else None
