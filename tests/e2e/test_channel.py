"""The ext_proc channel carries provider keys: only Envoy may reach it.

Reproduces the attack that found the hole (a keyless grpcio client on the same host asking the
service for a request's headers gets the provider key back), then shows who can no longer make
it: another user cannot connect to the Unix socket or replace it, no other process can bind the
service's address, and on a mutual-TLS listener only a client certificate from the right CA with
an accepted name gets a stream.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_proc.envoy_config import ClientTLS
from ext_proc.policy.compiled import key_digest
from ext_proc.server import listen
from ext_proc.stack import Stack, free_port
from tests.certs import CA
from tests.unix_users import as_other_user, needs_root, open_directory, tcp_listeners

pytestmark = pytest.mark.e2e

PROVIDER_KEY = "sk-channel-test-secret-0001"
POLICY = """
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: CHANNEL_OPENAI_KEY}}
models:
  gpt-4o-mini: {provider: openai}
teams:
  platform: {workloads: [local-dev], models: ["*"]}
"""
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _stack(work: Path, **options: object) -> Stack:
    work.mkdir(parents=True, exist_ok=True)
    policy = work / "policy.yaml"
    policy.write_text(POLICY)
    return Stack(work / "stack", policy=policy, workload="local-dev", service_env={"CHANNEL_OPENAI_KEY": PROVIDER_KEY},
                 mocked=frozenset({"openai"}), mock_args=("--api-key", PROVIDER_KEY), stand_ins_get_keys=True,
                 **options)  # type: ignore[arg-type]


def _ask_for_headers(channel: grpc.Channel) -> str:
    """What the issue's attacker did: request headers and body for gpt-4o-mini; the headers set."""
    def messages() -> Iterator[pb.ProcessingRequest]:
        headers = [(":method", "POST"), (":path", "/v1/chat/completions"), ("content-type", "application/json")]
        yield pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers])))
        yield pb.ProcessingRequest(request_body=pb.HttpBody(
            body=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}', end_of_stream=True))

    answers = list(pb_grpc.ExternalProcessorStub(channel).Process(messages(), timeout=5))
    mutation = answers[-1].request_body.response.header_mutation
    return " ".join(f"{h.header.key}: {h.header.raw_value.decode()}" for h in mutation.set_headers)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _stack(tmp_path_factory.mktemp("channel"), workers=2) as stack:
        yield stack


def test_the_default_channel_is_a_unix_socket_in_a_private_directory(sidecar: Stack) -> None:
    address = listen.parse(sidecar.ext_proc)
    assert address.kind == "unix"
    directory = os.lstat(os.path.dirname(address.path))
    assert directory.st_uid == os.geteuid() and directory.st_mode & 0o027 == 0
    client = openai.OpenAI(base_url=sidecar.base_url + "/v1", api_key="x", max_retries=0)
    assert client.chat.completions.create(**BODY).choices[0].message.content  # Envoy reaches it
    # The service opens no TCP listener but its loopback admin port, Envoy none but the gateway's (its
    # admin is a socket next to the service's).
    assert tcp_listeners(sidecar.procs["tollway"].pid) == {sidecar.service_admin_port}
    assert tcp_listeners(sidecar.procs["envoy"].pid) == {sidecar.listen_port}
    assert sidecar.admin_socket.parent == Path(address.path).parent
    assert sidecar.envoy_admin("/ready").text == "LIVE\n"


def test_the_socket_is_what_protects_the_keys(sidecar: Stack) -> None:
    """Whoever can connect gets the key (that is the channel's job); the socket lets only Envoy's user in."""
    path = listen.parse(sidecar.ext_proc).path
    with grpc.insecure_channel(f"unix:{path}") as channel:
        assert f"authorization: Bearer {PROVIDER_KEY}" in _ask_for_headers(channel)


@needs_root
def test_another_user_cannot_reach_or_replace_the_socket(tmp_path: Path) -> None:
    with open_directory() as parent, _stack(tmp_path, ext_proc_address=f"unix:{parent}/run/ext_proc.sock") as stack:
        _attack(stack)


def _attack(stack: Stack) -> None:
    path = listen.parse(stack.ext_proc).path
    assert os.stat(os.path.dirname(os.path.dirname(path))).st_mode & 0o005 == 0o005  # the way there is open

    def attack() -> dict[str, int]:
        outcome: dict[str, int] = {}
        for name, step in (("connect", lambda s: s.connect(path)),
                           ("bind", lambda s: s.bind(os.path.join(os.path.dirname(path), "x.sock")))):
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    step(sock)
                    outcome[name] = 0
                except OSError as exc:
                    outcome[name] = exc.errno or -1
        try:
            os.rename(path, path + ".old")
            outcome["rename"] = 0
        except OSError as exc:
            outcome["rename"] = exc.errno or -1
        return outcome

    refused = {"connect": errno.EACCES, "bind": errno.EACCES, "rename": errno.EACCES}
    assert as_other_user(attack) == refused
    # Envoy runs as Tollway's user here: a member of Tollway's group (on macOS every user is in staff) is
    # refused as well.
    assert as_other_user(attack, groups=(os.getegid(),)) == refused
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="x", max_retries=0)
    assert client.chat.completions.create(**BODY).choices[0].message.content


def test_a_second_service_cannot_take_over_the_socket(sidecar: Stack) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "serve", "--listen", sidecar.ext_proc, "--admin-port", "0"],
        capture_output=True, text=True, timeout=30,
    )
    assert second.returncode == 2
    assert "is in use: another Tollway is listening on it" in second.stderr
    assert "Traceback" not in second.stderr
    client = openai.OpenAI(base_url=sidecar.base_url + "/v1", api_key="x", max_retries=0)
    assert client.chat.completions.create(**BODY).choices[0].message.content  # still served


def test_plain_tcp_is_only_used_when_asked_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    with _stack(tmp_path, ext_proc_address=f"tcp://127.0.0.1:{port}") as stack:
        client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="x", max_retries=0)
        assert client.chat.completions.create(**BODY).choices[0].message.content
        with socket.socket() as thief:  # SO_REUSEPORT would have let it share the port
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError) as info:
                thief.bind(("127.0.0.1", port))
            assert info.value.errno == errno.EADDRINUSE
    assert "any process that can reach it can read provider keys" in (stack.workdir / "tollway.log").read_text()


def test_mutual_tls_lets_only_envoys_certificate_in(tmp_path: Path) -> None:
    ca, rogue_ca = CA(tmp_path, "mesh"), CA(tmp_path, "rogue")
    server = ca.issue("tollway", dns=("tollway.tollway-system.svc",), server=True)
    envoy = ca.issue("envoy", uris=("spiffe://cluster.local/ns/app/sa/envoy",), server=False)
    intruder = ca.issue("intruder", uris=("spiffe://cluster.local/ns/app/sa/intruder",), server=False)
    rogue = rogue_ca.issue("envoy", uris=("spiffe://cluster.local/ns/app/sa/envoy",), server=False)
    port = free_port()
    serve_args = ("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-client-ca", str(ca.cert),
                  "--tls-client-san", "spiffe://cluster.local/ns/app/sa/envoy")
    tls = ClientTLS(str(envoy.cert), str(envoy.key), str(ca.cert), "tollway.tollway-system.svc")
    with _stack(tmp_path / "tls", ext_proc_address=f"tls://127.0.0.1:{port}", ext_proc_tls=tls,
                serve_args=serve_args, workers=2) as stack:
        client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="x", max_retries=0)
        for stream in (False, True):
            answer = client.chat.completions.create(**BODY, stream=stream)
            assert list(answer) if stream else answer.choices[0].message.content  # type: ignore[arg-type]

        def health(cert: Path | None, key: Path | None) -> bool:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca.cert.read_bytes(),
                private_key=key.read_bytes() if key else None,
                certificate_chain=cert.read_bytes() if cert else None,
            )
            options = [("grpc.ssl_target_name_override", "tollway.tollway-system.svc")]
            with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
                try:
                    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
                except grpc.RpcError:
                    return False
                return answer.status == health_pb2.HealthCheckResponse.SERVING

        assert health(envoy.cert, envoy.key)  # the positive control: Envoy's certificate gets in
        assert not health(None, None)  # no certificate
        assert not health(rogue.cert, rogue.key)  # signed by another CA
        assert not health(intruder.cert, intruder.key)  # the right CA, a name that is not Envoy's
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, pytest.raises(grpc.RpcError):  # no TLS at all
            _ask_for_headers(plain)
        log = (stack.workdir / "tollway.log").read_text()
        assert "none of the accepted names" in log and PROVIDER_KEY not in log


GATEWAY_KEY = "tw-gateway-0123456789abcdefghijklmnopqrstuvwxyzABCD"
GATEWAY_POLICY = f"""
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: CHANNEL_OPENAI_KEY}}}}
  anthropic: {{kind: anthropic, credential: {{env: CHANNEL_ANTHROPIC_KEY}}}}
routing:
  aliases:
    smart:
      targets:
        - {{provider: openai, model: gpt-4o-mini}}
        - {{provider: anthropic, model: claude-3-5-haiku-20241022}}
teams:
  app: {{keys: [{{id: app-ci, sha256: {key_digest(GATEWAY_KEY)}}}], models: [smart]}}
"""
ANTHROPIC_KEY = "sk-ant-channel-test-0002"
GATEWAY_SPIFFE = "spiffe://cluster.local/ns/platform/sa/gateway"


@pytest.mark.parametrize("relay", [True, False], ids=["relay", "strict"])
def test_a_central_gateways_key_callers_fall_back_only_when_its_certificate_is_a_relay(
        tmp_path: Path, relay: bool) -> None:
    """The central-gateway deployment: one Envoy the platform team runs (its certificate names no
    workload of the policy) reaches a shared tls:// Tollway for callers with Tollway keys. A fallback
    alias whose first target fails is served by the second with --tls-relay-san naming that
    certificate; without it the try is a 403 attempt_refused and no provider is asked."""
    ca = CA(tmp_path, "platform")
    server = ca.issue("tollway", dns=("tollway.tollway-system.svc",), server=True)
    envoy = ca.issue("gateway", uris=(GATEWAY_SPIFFE,), server=False)
    port = free_port()
    serve_args = ("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-client-ca", str(ca.cert),
                  "--tls-client-san", "spiffe://cluster.local/*",
                  *(("--tls-relay-san", GATEWAY_SPIFFE) if relay else ()))
    tls = ClientTLS(str(envoy.cert), str(envoy.key), str(ca.cert), "tollway.tollway-system.svc")
    work = tmp_path / "gateway"
    work.mkdir()
    policy = work / "policy.yaml"
    policy.write_text(GATEWAY_POLICY)
    keys = {"CHANNEL_OPENAI_KEY": PROVIDER_KEY, "CHANNEL_ANTHROPIC_KEY": ANTHROPIC_KEY}
    with Stack(work / "stack", policy=policy, service_env=keys, mocked=frozenset({"openai", "anthropic"}),
               mock_args=("--api-key", PROVIDER_KEY, "--api-key", ANTHROPIC_KEY), stand_ins_get_keys=True,
               ext_proc_address=f"tls://127.0.0.1:{port}", ext_proc_tls=tls, serve_args=serve_args,
               workers=2) as stack:
        client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=GATEWAY_KEY, max_retries=0, timeout=10)
        mock = f"http://127.0.0.1:{stack.mock_port}"
        failing = {"x-mock-openai-status": "500"}  # the first target fails
        if relay:
            raw = client.chat.completions.with_raw_response.create(
                model="smart", messages=[{"role": "user", "content": "hi"}], extra_headers=failing)
            assert raw.parse().choices[0].message.content
            assert raw.headers["x-tollway-provider"] == "anthropic" and raw.headers["x-tollway-attempts"] == "2"
            request_id = raw.headers["x-tollway-request-id"]
            saw = [r for r in httpx.get(mock + "/_mock/requests").json()
                   if dict((k.lower(), v) for k, v in r["headers"]).get("x-request-id") == request_id]
            assert [r["path"] for r in saw] == ["/v1/chat/completions", "/v1/messages"]
        else:
            with pytest.raises(openai.PermissionDeniedError) as caught:
                client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}],
                                               extra_headers=failing)
            assert caught.value.status_code == 403
            assert caught.value.body["code"] == "attempt_refused"  # type: ignore[index]
            assert PROVIDER_KEY not in str(caught.value.response.headers)
            assert httpx.get(mock + "/_mock/requests").json() == []  # no provider was asked
        log = (stack.workdir / "tollway.log").read_text()
        assert ("refused attempt_refused" in log) is not relay
        assert PROVIDER_KEY not in log and ANTHROPIC_KEY not in log
