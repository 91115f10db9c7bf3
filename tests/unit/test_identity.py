"""Identity, access and credentials: decide.py against a hand-built CompiledPolicy, and the store."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from ext_proc.core import upstream
from ext_proc.core.actions import Respond
from ext_proc.core.events import RequestBody, RequestHeaders
from ext_proc.llm import apis
from ext_proc.llm.errors import ClientError
from ext_proc.policy import decide
from ext_proc.policy.compile import compile_policy
from ext_proc.policy.compiled import (
    CompiledPolicy,
    CredentialSource,
    Principal,
    Provider,
    Target,
    Team,
    key_digest,
)
from ext_proc.server.credentials import STAND_IN_KEY, CredentialStore, credential_headers
from ext_proc.server.records import RecordWriter
from ext_proc.server.servicer import Service

OPENAI = Provider("openai", "openai", "openai", CredentialSource(env="OPENAI_KEY"))
ANTHROPIC = Provider("anthropic", "anthropic", "anthropic", CredentialSource(env="ANT_KEY"))
AZURE = Provider("azure", "azure-openai", "azure", CredentialSource(env="AZ_KEY"), api_version="2024-10-21")
GPT = Target("gpt-4o", OPENAI, "gpt-4o-2024-08-06")
CLAUDE = Target("claude", ANTHROPIC, "claude-opus-4-5")
AZ = Target("azure-gpt", AZURE, "prod-deploy")
KEY = "tw-team-a-key"
POLICY = CompiledPolicy(
    version="v1",
    source="<test>",
    providers={"openai": OPENAI, "anthropic": ANTHROPIC, "azure": AZURE},
    models={"gpt-4o": GPT, "gpt4o": GPT, "claude": CLAUDE, "azure-gpt": AZ},
    teams={"a": Team("a", frozenset({"gpt-4o", "azure-gpt"})), "all": Team("all", frozenset(), all_models=True)},
    keys={key_digest(KEY): ("a", "a-1")},
    workloads={"spiffe://x/ns/all/sa/app": "all", "local-dev": "a"},
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer tw-x"}, "tw-x"),
        ({"authorization": "bearer   tw-x  "}, "tw-x"),
        ({"x-api-key": "tw-y"}, "tw-y"),
        ({"authorization": "Basic abc", "x-api-key": "k"}, "k"),
        ({"authorization": "Bearer sk-dummy", "x-api-key": "tw-y"}, "tw-y"),  # the Tollway key, whichever header
        ({"authorization": "Bearer tw-x", "x-api-key": "sk-ant-z"}, "tw-x"),
        ({"authorization": "Bearer tw-x", "x-api-key": "tw-x"}, "tw-x"),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert decide.presented_key(headers) == expected


def test_two_different_tollway_keys_are_a_401_naming_neither() -> None:
    with pytest.raises(ClientError) as caught:
        decide.identify(POLICY, {"authorization": f"Bearer {KEY}", "x-api-key": "tw-other-team"}, {}, "local-dev")
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert "Two different Tollway keys" in caught.value.message and "tw-other" not in caught.value.message


def test_a_tollway_key_identifies_its_team() -> None:
    principal = decide.identify(POLICY, {"authorization": f"Bearer {KEY}"}, {}, "local-dev")
    assert principal == Principal("a", key_id="a-1")


def test_an_unknown_tollway_key_is_401_even_with_a_workload() -> None:
    with pytest.raises(ClientError) as caught:
        decide.identify(POLICY, {"x-api-key": "tw-wrong"}, {}, "local-dev")
    assert caught.value.status == 401 and "tw-wrong" not in caught.value.message


def test_other_keys_are_ignored_in_favour_of_the_workload() -> None:
    principal = decide.identify(POLICY, {"authorization": "Bearer sk-real-openai"}, {}, "local-dev")
    assert principal == Principal("a", workload="local-dev")


def test_the_peer_certificate_spiffe_id_wins_over_the_sidecar_default() -> None:
    attributes = {decide.SPIFFE_ATTRIBUTE: "spiffe://x/ns/all/sa/app"}
    assert decide.identify(POLICY, {}, attributes, "local-dev").team == "all"


def test_on_mutual_tls_the_connections_certificate_decides_not_the_message() -> None:
    """A shared tls:// Tollway: any workload of the mesh may open a stream and write the attribute."""
    own, other = "spiffe://x/ns/all/sa/app", "spiffe://x/ns/other/sa/app"
    assert decide.identify(POLICY, {}, {}, own, mtls=True).team == "all"  # Istio's sidecars send no attribute
    assert decide.identify(POLICY, {}, {decide.SPIFFE_ATTRIBUTE: own}, own, mtls=True).team == "all"  # agreeing
    for peer in (other, None):  # another workload's certificate, or one without a SPIFFE ID, claiming "all"
        with pytest.raises(ClientError) as caught:
            decide.identify(POLICY, {}, {decide.SPIFFE_ATTRIBUTE: own}, peer, mtls=True)
        assert (caught.value.status, caught.value.code) == (403, "workload_mismatch")
        assert "spiffe://" not in caught.value.message
    # A Tollway key still decides (the attribute is not read).
    assert decide.identify(POLICY, {"x-api-key": KEY}, {decide.SPIFFE_ATTRIBUTE: own}, other, mtls=True).team == "a"


@pytest.mark.parametrize(("headers", "code", "says"), [
    ({}, "missing_api_key", "No Tollway API key was provided"),
    ({"x-api-key": "sk-1"}, "invalid_api_key", "not a provider key"),
    ({"authorization": "tw-a-secret-key-123"}, "invalid_api_key", "must be 'Bearer <your Tollway key>'"),
    ({"authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key", "must be 'Bearer <your Tollway key>'"),
])
def test_no_identity_is_401(headers: dict[str, str], code: str, says: str) -> None:
    with pytest.raises(ClientError) as caught:
        decide.identify(POLICY, headers, {}, None)
    assert (caught.value.status, caught.value.code) == (401, code) and says in caught.value.message
    assert "secret" not in caught.value.message and "dXNl" not in caught.value.message  # never echoed


def test_targets_and_access() -> None:
    a = Principal("a")
    assert decide.target_for(POLICY, a, apis.CHAT_COMPLETIONS, "gpt4o") is GPT
    with pytest.raises(ClientError) as caught:
        decide.target_for(POLICY, a, apis.MESSAGES, "claude")
    assert caught.value.status == 403 and caught.value.message == "Team 'a' may not use model 'claude'."
    with pytest.raises(ClientError) as caught:
        decide.target_for(POLICY, a, apis.CHAT_COMPLETIONS, "nope")
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    # An OpenAI chat client may use an Anthropic-served model (translated); embeddings may not.
    assert decide.target_for(POLICY, Principal("all"), apis.CHAT_COMPLETIONS, "claude").provider.kind == "anthropic"
    with pytest.raises(ClientError) as caught:
        decide.target_for(POLICY, Principal("all"), apis.EMBEDDINGS, "claude")
    assert caught.value.status == 400 and caught.value.code == "api_mismatch"


def test_azure_path() -> None:
    payload = {"model": "gpt", "messages": []}
    assert upstream.prepare(apis.CHAT_COMPLETIONS, dict(payload), AZ, "/v1/chat/completions?x=1") == (
        payload, "/openai/deployments/prod-deploy/chat/completions?api-version=2024-10-21")
    assert upstream.prepare(apis.EMBEDDINGS, {"model": "gpt"}, AZ, "/v1/embeddings")[1] == (
        "/openai/deployments/prod-deploy/embeddings?api-version=2024-10-21")
    assert upstream.prepare(apis.CHAT_COMPLETIONS, dict(payload), GPT, "/v1/chat/completions")[1] is None


def test_credential_headers_per_kind() -> None:
    assert credential_headers(OPENAI, "k") == (("authorization", "Bearer k"),)
    assert credential_headers(ANTHROPIC, "k") == (("x-api-key", "k"), ("anthropic-version", "2023-06-01"))
    assert credential_headers(AZURE, "k") == (("api-key", "k"),)


def test_store_reads_env_and_rereads_changed_files(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "key"
    path.write_text("first\n")
    store = CredentialStore(environ={"OPENAI_KEY": "sk-env"}, clock=lambda: now[0], recheck=1.0)
    assert store.headers(OPENAI) == (("authorization", "Bearer sk-env"),)
    source = CredentialSource(file=str(path))
    assert store.key(source) == "first"
    path.write_text("second-and-longer\n")
    assert store.key(source) == "first"  # within the recheck interval: cached
    now[0] = 2.0
    assert store.key(source) == "second-and-longer"
    path.unlink()
    now[0] = 4.0
    assert store.key(source) is None


def test_a_stand_in_gets_the_placeholder_never_the_providers_own_key() -> None:
    """tollway up stands in for an Azure resource whose key is set: the fake provider, which shows what it got to
    any local process, must not receive that key."""
    environ = {"AZ_KEY": "azure-REAL-key", "OPENAI_KEY": "sk-REAL-key"}
    store = CredentialStore(environ=environ, stand_ins=frozenset({"azure"}))
    assert store.headers(AZURE) == (("api-key", STAND_IN_KEY),)
    assert store.headers(OPENAI) == (("authorization", "Bearer sk-REAL-key"),)  # not stood in: its own key
    assert CredentialStore(environ={}, stand_ins=frozenset({"azure"})).headers(AZURE) == (("api-key", STAND_IN_KEY),)
    # A stand-in that checks keys (the tests' fake provider with --api-key) asks for the real ones.
    checking = CredentialStore(environ=environ, stand_ins=frozenset({"azure"}), stand_ins_get_keys=True)
    assert checking.headers(AZURE) == (("api-key", "azure-REAL-key"),)
    assert CredentialStore(environ={}, stand_ins=frozenset({"azure"}), stand_ins_get_keys=True).headers(AZURE) \
        == (("api-key", STAND_IN_KEY),)


def test_store_missing_key_injects_nothing_and_reports_the_source_only(caplog: pytest.LogCaptureFixture) -> None:
    store = CredentialStore(environ={})
    assert store.headers(ANTHROPIC) == ()
    assert "ANT_KEY" in caplog.text
    assert store.status({"openai": OPENAI}) == {"openai": False}


@pytest.mark.parametrize(("written", "key"), [
    ("\ufeffsk-file-key\n", "sk-file-key"),  # an editor's byte-order mark
    ("sk-file-key\r\n", "sk-file-key"),  # CRLF
    ("  sk-file-key\n\n", "sk-file-key"),
    ("sk-file-key\nsk-second-line\n", None),  # two lines: never one header
    ("sk-file\tkey\n", None),
    ("sk-file\x00key", None),
    ("sk-file\u200bkey", None),  # a pasted zero-width space
    ("sk-file key", None),
])
def test_a_key_file_that_cannot_be_a_header_is_a_missing_key(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              written: str, key: str | None) -> None:
    """A key no header can carry made every request to its provider fail (a 500) while /readyz said
    it was served: it is treated as missing, with a warning naming the file, never the content."""
    path = tmp_path / "key"
    path.write_bytes(written.encode())
    provider = dataclasses.replace(OPENAI, credential=CredentialSource(file=str(path)))
    store = CredentialStore(environ={})
    assert store.key(provider.credential) == key  # type: ignore[arg-type]
    assert store.status({"openai": provider}) == {"openai": key is not None}
    if key is None:
        assert store.headers(provider) == ()
        assert str(path) in caplog.text and "unusable" in caplog.text
        assert "sk-file" not in caplog.text and "second" not in caplog.text
    else:
        assert store.headers(provider) == (("authorization", f"Bearer {key}"),)


def test_a_key_variable_that_cannot_be_a_header_is_a_missing_key(caplog: pytest.LogCaptureFixture) -> None:
    store = CredentialStore(environ={"OPENAI_KEY": "sk-one\nsk-two"})
    assert store.headers(OPENAI) == () and store.status({"openai": OPENAI}) == {"openai": False}
    assert "OPENAI_KEY" in caplog.text and "sk-one" not in caplog.text


def test_on_mutual_tls_a_trusted_relays_attribute_is_its_word(tmp_path: Path) -> None:
    """tollway serve --tls-relay-san: a relay's stream (an Envoy the platform team runs) is believed
    as the Unix socket's Envoy is; the same certificate without it may only be its own workload."""
    policy = compile_policy("""
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
models:
  gpt-4o-mini: {provider: openai}
teams:
  search: {workloads: ["spiffe://cluster.local/ns/search/sa/app"], models: ["*"]}
""")
    holder = SimpleNamespace(current=policy)
    on_tls = Service(RecordWriter(str(tmp_path / "records.jsonl")), policy=holder, mtls=True)  # type: ignore[arg-type]
    gateway = "spiffe://cluster.local/ns/platform/sa/gateway"
    head = RequestHeaders({":method": "POST", ":path": "/v1/chat/completions"}, False, 1,
                          {decide.SPIFFE_ATTRIBUTE: "spiffe://cluster.local/ns/search/sa/app"})
    body = RequestBody(orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
                       True, 2)

    def answer(relay: bool) -> tuple[object, object, object]:
        session = on_tls.session(gateway, relay=relay)
        first = session.handle(head)
        return first, (session.handle(body) if not isinstance(first, Respond) else None), session.flow.principal

    first, second, principal = answer(relay=True)
    assert not isinstance(first, Respond) and not isinstance(second, Respond)
    assert principal == Principal("search", workload="spiffe://cluster.local/ns/search/sa/app")
    first, second, _ = answer(relay=False)
    refusal = first if isinstance(first, Respond) else second
    assert isinstance(refusal, Respond) and refusal.status == 403
    assert orjson.loads(refusal.body)["error"]["code"] == "workload_mismatch"


def test_a_key_file_every_user_can_read_is_warned_of_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The admin token file warned when every user could read it; a provider's key file did not."""
    loose, tight = tmp_path / "loose", tmp_path / "tight"
    loose.write_text("sk-loose-key\n")
    tight.write_text("sk-tight-key\n")
    loose.chmod(0o644)
    tight.chmod(0o600)
    now = [0.0]
    store = CredentialStore(environ={}, clock=lambda: now[0])
    for step in range(3):  # read again (rechecked each second, a rotated file re-read): one warning
        now[0] = step * 2.0
        loose.write_text(f"sk-loose-key-{step}\n")
        os.utime(loose, ns=(step * 10**9, step * 10**9))
        assert store.key(CredentialSource(file=str(loose))) == f"sk-loose-key-{step}"
        assert store.key(CredentialSource(file=str(tight))) == "sk-tight-key"
    warnings = [r.getMessage() for r in caplog.records if "readable by every user" in r.getMessage()]
    assert len(warnings) == 1 and str(loose) in warnings[0] and str(tight) not in caplog.text
    assert "sk-loose" not in caplog.text


def test_a_key_file_of_a_kubernetes_secret_volume_is_not_warned_of(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The kubelet's layout (``..data`` a link to a timestamped directory, each key a link into it):
    its default 0644 is seen only by the containers that mount the volume, nothing to warn of."""
    volume = tmp_path / "provider-keys"
    stamped = volume / "..2026_12_07_20_00_00.000000001"
    stamped.mkdir(parents=True)
    (stamped / "openai").write_text("sk-volume-key\n")
    (stamped / "openai").chmod(0o644)
    (volume / "..data").symlink_to(stamped.name)
    (volume / "openai").symlink_to("..data/openai")
    store = CredentialStore(environ={})
    assert store.key(CredentialSource(file=str(volume / "openai"))) == "sk-volume-key"
    assert "readable by every user" not in caplog.text
