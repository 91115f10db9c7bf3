"""Inside the test's network namespace: a pod's Tollway sidecar, as injected, and an unchanged app.

Run by ``test_intercept_e2e.py`` with ``ip netns exec`` (which also gives this process its own
mount namespace and the namespace's ``/etc/hosts``: api.openai.com is 127.0.0.2 here), after the
init container's script has set up the redirect. It then does what the kubelet would with the
injected pod: ``/run`` a fresh tmpfs anyone may write to (the pod's ``tollway-run`` emptyDir),
Tollway started with the injected container's arguments and identity as uid 10001, then Envoy
with the injected bootstrap as uid 10002 (group 10001), each once the previous one is ready.
The fake provider stands in for api.openai.com behind Envoy. Then the application: the
``openai`` SDK with its default base URL and only the test CA trusted (``SSL_CERT_FILE``), and
HTTPS to hosts that must not be intercepted. Prints one JSON object with what it saw.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

MOCK_PORT = 18080


def wait_ok(url: str, proc: subprocess.Popen[bytes], name: str, log: Path, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} not ready:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def stat(name: str) -> int:
    from ext_proc.k8s.sidecar import ENVOY_ADMIN
    from ext_proc.server.clusters import fetch

    text = fetch(f"unix:{ENVOY_ADMIN}", f"/stats?filter=^{name}$", timeout=2).decode()
    return int(text.split(":")[1]) if ":" in text else 0


# What a process of the application can do to Envoy's admin: its loopback port (the pod's network
# namespace is the app's), or its socket (here /run is everyone's; in the pod, Tollway's and Envoy's).
ADMIN_PROBE = """
import json, socket, sys
from ext_proc.server.clusters import fetch
out = {}
try:
    with socket.create_connection(("127.0.0.1", 9901), timeout=2) as s:
        s.sendall(b"POST /logging?level=debug HTTP/1.1\\r\\nhost: 127.0.0.1\\r\\ncontent-length: 0\\r\\n\\r\\n")
        out["tcp"] = s.recv(100).decode(errors="replace").split("\\r\\n")[0]
except OSError as exc:
    out["tcp"] = type(exc).__name__
try:
    out["socket"] = fetch("unix:" + sys.argv[1], "/ready", timeout=2).decode().strip()
except OSError as exc:
    out["socket"] = type(exc).__name__
print(json.dumps(out))
"""


def admin_probe(uid: int, gid: int) -> dict[str, str]:
    from ext_proc.k8s.sidecar import ENVOY_ADMIN

    proc = subprocess.run([sys.executable, "-c", ADMIN_PROBE, ENVOY_ADMIN], capture_output=True, text=True,
                          user=uid, group=gid, extra_groups=[], timeout=30)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def tls_server(address: str, cert: str, key: str, body: bytes) -> tuple[socket.socket, list[str]]:
    """A tiny HTTPS server on ``address``:443 answering ``body``; the SNI of each connection it served."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    seen: list[str] = []

    def sni(_sock: object, name: str | None, _context: object) -> None:
        seen.append(name or "")

    context.sni_callback = sni  # type: ignore[assignment]
    listener = socket.create_server((address, 443))

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                                % (len(body), body))
            except (OSError, ssl.SSLError):
                pass

    threading.Thread(target=loop, daemon=True).start()
    return listener, seen


def https_get(url_host: str, address: str, sni: str, ca: str) -> str:
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection((address, 443), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nhost: {url_host}\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


def direct_to_intercept() -> dict[str, Any]:
    """A connection straight to the interception listener (not redirected, no provider SNI): its original
    destination is the listener itself, so it must be closed, never forwarded (Envoy to itself, a loop)."""
    before = stat("cluster.tollway_passthrough.upstream_cx_total")
    started = time.monotonic()
    out: dict[str, Any] = {}
    with socket.create_connection(("127.0.0.1", 10443), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            out["read"] = conn.recv(100).decode(errors="replace")
        except OSError as exc:
            out["read"] = type(exc).__name__
    out["closed_within_2s"] = time.monotonic() - started < 2
    time.sleep(0.5)
    out["passthrough_cx"] = stat("cluster.tollway_passthrough.upstream_cx_total") - before
    out["overflow"] = stat("cluster.tollway_passthrough.upstream_cx_overflow")
    return out


def reachable_python(work: Path) -> None:
    """Let the sidecar's users run this Python: in this private mount namespace, a directory on the
    interpreter's path that only root may enter (e.g. /root, for a pyenv build) becomes a tmpfs that
    everyone may enter, holding only the interpreter's own subtree (bind-mounted back)."""
    real = Path(os.path.realpath(sys.executable))
    for parent in reversed(real.parents):
        if parent == Path("/") or os.stat(parent).st_mode & 0o001:
            continue
        child = real.parts[len(parent.parts)]
        keep = work / "keep-python"
        keep.mkdir(exist_ok=True)
        subprocess.run(["mount", "--bind", str(parent / child), str(keep)], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m", "tollway-reach", str(parent)], check=True)
        (parent / child).mkdir()
        subprocess.run(["mount", "--bind", str(keep), str(parent / child)], check=True)
        return


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    # What the kubelet gives the pod: /run an emptyDir of Tollway's and Envoy's (mode 0777, no sticky bit).
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0777,size=16m", "tollway-run", "/run"], check=True)
    reachable_python(work)
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, Any] = {}
    try:
        def start(name: str, argv: list[str], stdout: Path | None = None, **kw: Any) -> subprocess.Popen[bytes]:
            log = open(work / f"{name}.log", "ab")  # noqa: SIM115 - the child's
            out = open(stdout, "ab") if stdout else log  # noqa: SIM115
            proc = subprocess.Popen(argv, stdout=out, stderr=log, cwd=spec["root"], **kw)
            procs.append(proc)
            return proc

        python = sys.executable
        mock = start("mock", [python, "-m", "ext_proc.cli", "mock-provider", "--port", str(MOCK_PORT),
                              "--api-key", spec["provider_key"]])
        wait_ok(f"http://127.0.0.1:{MOCK_PORT}/healthz", mock, "mock", work / "mock.log")
        # As in the pod: the request records on stdout, the service's log on stderr.
        tollway = start("tollway", [python, "-m", "ext_proc.cli", *spec["tollway_args"]], Path(spec["record_log"]),
                        env={**os.environ, **spec["tollway_env"]}, user=10001, group=10001, extra_groups=[])
        wait_ok("http://127.0.0.1:9902/readyz", tollway, "tollway", work / "tollway.log")
        envoy = start("envoy", [spec["envoy"], *spec["envoy_args"]], user=10002, group=10001, extra_groups=[])
        wait_ok("http://127.0.0.1:10021/ready", envoy, "envoy", work / "envoy.log")
        for path in ("/tollway/readyz", "/tollway/metrics", "/stats/prometheus"):
            with urllib.request.urlopen(f"http://127.0.0.1:10021{path}", timeout=2) as response:
                result[f"pod{path}"] = response.status

        direct, direct_seen = tls_server("127.0.0.3", spec["other_cert"], spec["other_key"], b"direct")
        shared, shared_seen = tls_server("127.0.0.2", spec["shared_cert"], spec["shared_key"], b"shared address")
        intercepted_before = stat("listener.127.0.0.1_10443.downstream_cx_total")

        # The application: the openai SDK, unchanged, default base URL, its own (non-Tollway) key.
        os.environ["SSL_CERT_FILE"] = spec["trust_bundle"]
        os.environ.pop("OPENAI_BASE_URL", None)
        import openai

        client = openai.OpenAI(api_key="sk-the-apps-own-key", max_retries=0, timeout=20)
        assert str(client.base_url) == "https://api.openai.com/v1/", client.base_url
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello through the pod's egress"}])
        completion = raw.parse()
        result["answer"] = completion.choices[0].message.content
        result["request_id"] = raw.headers.get("x-tollway-request-id")
        result["provider"] = raw.headers.get("x-tollway-provider")
        intercepted_after_sdk = stat("listener.127.0.0.1_10443.downstream_cx_total")

        # Another host: not redirected at all.
        result["other"] = https_get("other.example", socket.gethostbyname("other.example"), "other.example",
                                    spec["trust_bundle"])
        result["other_seen"] = direct_seen
        intercepted_after_other = stat("listener.127.0.0.1_10443.downstream_cx_total")
        # Another site on the provider's address (a CDN): redirected, then passed through untouched.
        result["shared"] = https_get("shared.example", "127.0.0.2", "shared.example", spec["trust_bundle"])
        result["shared_seen"] = shared_seen
        result["passthrough_cx"] = stat("cluster.tollway_passthrough.upstream_cx_total")
        result["direct"] = direct_to_intercept()
        result["intercepted"] = [intercepted_before, intercepted_after_sdk, intercepted_after_other]
        with urllib.request.urlopen(f"http://127.0.0.1:{MOCK_PORT}/_mock/requests", timeout=2) as response:
            result["provider_saw"] = json.loads(response.read())
        # Envoy's admin: not on loopback; its socket answers Tollway's user, not the application's,
        # whose next request's upstream headers (the provider key) must not reach Envoy's log.
        result["admin/app"] = admin_probe(65534, 65534)
        result["admin/tollway"] = admin_probe(10001, 10001)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "And again"}])
        direct.close()
        shared.close()
        # The record: written in batches; wait for it.
        deadline = time.monotonic() + 10
        log = Path(spec["record_log"])
        while time.monotonic() < deadline:
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] \
                if log.exists() else []
            found = [r for r in records if r.get("request_id") == result["request_id"]]
            if found:
                result["record"] = found[0]
                break
            time.sleep(0.1)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
