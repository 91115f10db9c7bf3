"""The policy compiler: the shipped policies, every error with its file, line and field, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ext_proc.cli import main
from ext_proc.guardrails.scanner import builtin
from ext_proc.policy.cli_keys import new_key
from ext_proc.policy.compile import PolicyError, PolicyIssue, compile_policy
from ext_proc.policy.compiled import CompiledPolicy, Principal, key_digest
from ext_proc.policy.schema import PATTERN_MEANINGS, json_schema

POLICIES = Path(__file__).resolve().parents[2] / "policies"
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
EXAMPLE = (POLICIES / "example.yaml").read_text()
MINIMAL = (POLICIES / "minimal.yaml").read_text()
DEMO_KEY = "tw-local-demo-key-not-secret"
SHA_A = "a" * 64
SHA_B = "b" * 64


def issues(text: str) -> list[str]:
    """Every issue of a policy that must not compile, as printed."""
    with pytest.raises(PolicyError) as caught:
        compile_policy(textwrap.dedent(text), "p.yaml")
    assert caught.value.errors, "a PolicyError carries at least one issue"
    assert str(caught.value) == "\n".join(str(issue) for issue in caught.value.errors)
    return [str(issue) for issue in caught.value.errors]


def compiles(text: str) -> CompiledPolicy:
    return compile_policy(textwrap.dedent(text), "p.yaml")


HEAD = """\
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
models:
  gpt-4o: {provider: openai, aliases: [gpt-4o-latest]}
  gpt-4o-mini: {provider: openai}
"""  # lines 1-6; the snippets below add teams from line 7


# -- the shipped policies -----------------------------------------------------------------------


def test_example_compiles_with_its_lookups() -> None:
    policy = compile_policy(EXAMPLE, "policies/example.yaml")
    assert policy.version == hashlib.sha256(EXAMPLE.encode()).hexdigest()[:12]
    assert policy.source == "policies/example.yaml"
    assert set(policy.providers) == {"openai", "anthropic", "azure-eu", "local-llm"}

    # the README's key-based call and `make run`'s key-less one
    assert policy.authenticate(DEMO_KEY) == Principal("demo", key_id="demo-readme")
    assert policy.authenticate("tw-not-a-known-key") is None
    assert policy.workload("local-dev") == Principal("platform", workload="local-dev")
    assert policy.workload("spiffe://cluster.local/ns/search/sa/search-api") == Principal(
        "search", workload="spiffe://cluster.local/ns/search/sa/search-api"
    )
    assert policy.workload("spiffe://cluster.local/ns/other/sa/x") is None

    # aliases resolve to the very same target as the canonical name
    sonnet = policy.resolve("claude-sonnet-4-5")
    assert sonnet is not None and policy.resolve("claude-sonnet") is sonnet
    assert policy.resolve("claude-sonnet-latest") is sonnet
    assert (sonnet.public, sonnet.upstream_model, sonnet.provider.kind) == (
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "anthropic",
    )
    mini = policy.resolve("gpt-4o-mini")
    assert mini is not None and mini.upstream_model == "gpt-4o-mini"  # defaults to the public name
    assert policy.resolve("gpt-5") is None

    # teams hold canonical names; "*" is every model
    assert policy.teams["search"].models == {
        "gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4-5", "gpt-4o-balanced"
    }
    assert policy.may_use("search", sonnet.public)
    assert policy.may_use("demo", mini.public) and not policy.may_use("demo", sonnet.public)
    assert policy.teams["platform"].all_models
    assert all(policy.may_use("platform", target.public) for target in policy.models.values())
    assert not policy.may_use("nobody", mini.public)

    openai, anthropic = policy.providers["openai"], policy.providers["anthropic"]
    assert openai.credential is not None and openai.credential.env == "OPENAI_API_KEY"
    assert anthropic.anthropic_version == "2023-06-01"
    azure = policy.providers["azure-eu"]
    assert (azure.kind, azure.cluster, azure.api_version) == ("azure-openai", "azure-openai-eu", "2024-10-21")
    assert azure.credential is not None and azure.credential.file == "/var/run/secrets/tollway/azure-eu/api-key"
    assert policy.providers["local-llm"].credential is None
    assert set(policy.sections) == {"guardrails"}


def test_example_keys_are_indexed_by_digest() -> None:
    policy = compile_policy(EXAMPLE)
    assert policy.keys[key_digest(DEMO_KEY)] == ("demo", "demo-readme")
    assert {team for team, _ in policy.keys.values()} == {"demo", "search", "support"}


def test_minimal_compiles() -> None:
    policy = compile_policy(MINIMAL, "policies/minimal.yaml")
    assert list(policy.providers) == ["openai"]
    assert policy.providers["openai"].cluster == "openai"  # defaults to the provider's name
    target = policy.resolve("gpt-4o-mini")
    assert target is not None and target.provider is policy.providers["openai"]
    principal = policy.workload("local-dev")
    assert principal is not None and policy.may_use(principal.team, target.public)
    assert policy.keys == {}


def test_compiled_policy_is_immutable() -> None:
    policy = compile_policy(MINIMAL)
    with pytest.raises(TypeError):
        policy.models["x"] = policy.models["gpt-4o-mini"]  # type: ignore[index]


def test_unquoted_dates_stay_version_strings() -> None:
    policy = compiles("""\
        apiVersion: tollway/v1
        providers:
          claude: {kind: anthropic, anthropic_version: 2023-06-01}
          azure: {kind: azure-openai, api_version: 2024-10-21}
        """)
    assert policy.providers["claude"].anthropic_version == "2023-06-01"
    assert policy.providers["azure"].api_version == "2024-10-21"
    assert policy.providers["claude"].credential is None


# -- the file as a whole ------------------------------------------------------------------------


def test_issue_format() -> None:
    issue = PolicyIssue("policies/example.yaml", 42, 9, "teams.search.keys[0].sha256", "must be 64 lowercase hex")
    assert str(issue) == "policies/example.yaml:42:9: teams.search.keys[0].sha256: must be 64 lowercase hex"
    assert str(PolicyIssue("p.yaml", 1, 1, "", "the policy is empty")) == "p.yaml:1:1: the policy is empty"


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n", "---\n"])
def test_empty_file(text: str) -> None:
    assert issues(text) == ["p.yaml:1:1: the policy is empty (a policy starts with 'apiVersion: tollway/v1')"]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert issues(text) == ["p.yaml:1:1: the top level must be a mapping (apiVersion, providers, models, teams)"]


def test_yaml_syntax_error_at_its_mark() -> None:
    assert issues("""\
        apiVersion: tollway/v1
        providers:
          openai: {kind: openai
        models: {}
        """) == ["p.yaml:3:11: invalid YAML: this '{' is not closed (the parser, at line 4: while parsing a flow "
              "mapping, expected ',' or '}', but got ':')"]  # where it was opened, not where the parser gave up
    # A mistake inside a flow closed later: the mistake's own place.
    assert issues("""\
        apiVersion: tollway/v1
        providers:
          openai: {
            kind: openai,
            credential: env: OPENAI_API_KEY,
          }
        """) == ["p.yaml:5:20: invalid YAML: while parsing a flow mapping, expected ',' or '}', but got ':'"]


def test_bad_indentation_is_a_syntax_error() -> None:
    [issue] = issues("""\
        apiVersion: tollway/v1
        teams:
          a:
            models: []
           b: {models: []}
        """)
    assert issue.startswith("p.yaml:5:4: invalid YAML:")


EXAMPLE_TEXT = (Path(__file__).resolve().parents[2] / "policies" / "example.yaml").read_text()


@pytest.mark.parametrize(("good", "bad", "spaces", "around"), [
    # a field indented one space too far: PyYAML breaks on that line
    ("    model: gpt-4o-2024-08-06", "     model: gpt-4o-2024-08-06", 5, 4),
    # a field indented one space short: PyYAML breaks on the NEXT line; the mistake is this one
    ("    kind: anthropic\n", "   kind: anthropic\n", 3, 4),
    # the first field of an entry indented too far: PyYAML breaks on the next line
    ("  claude-haiku:\n    provider: anthropic\n", "  claude-haiku:\n      provider: anthropic\n", 6, 4),
    # a list item indented less than the one before it
    ("        - {provider: anthropic, model: claude-3-5-haiku-20241022, context_window: 200000}",
     "      - {provider: anthropic, model: claude-3-5-haiku-20241022, context_window: 200000}", 6, 8),
])
def test_an_indentation_mistake_is_reported_on_the_line_that_has_it(good: str, bad: str, spaces: int,
                                                                    around: int) -> None:
    assert good in EXAMPLE_TEXT
    text = EXAMPLE_TEXT.replace(good, bad, 1)
    wrong = text[:text.index(bad)].count("\n") + 1 + bad.rstrip("\n").count("\n")  # the line with the odd indent
    [issue] = issues(text)
    assert issue.startswith(f"p.yaml:{wrong}:{spaces + 1}: invalid YAML: this line is indented by {spaces} spaces "
                            f"where the lines around it use {around} (the parser: "), issue


def test_several_documents() -> None:
    assert issues("apiVersion: tollway/v1\n---\napiVersion: tollway/v1\n") == [
        "p.yaml:2:1: invalid YAML: expected a single document in the stream, but found another document"
    ]


def test_control_character() -> None:
    [issue] = issues("apiVersion: tollway/v1\nteams: {\x07}\n")
    assert issue.startswith("p.yaml:2:9: invalid YAML: unacceptable character #x0007")


def test_unsafe_tags_are_refused() -> None:
    [issue] = issues("apiVersion: !!python/name:os.system tollway/v1\n")
    assert issue.startswith("p.yaml:1:13: invalid YAML:") and "could not determine a constructor" in issue


def test_duplicate_keys_are_found_in_the_node_tree() -> None:
    assert issues("""\
        apiVersion: tollway/v1
        teams:
          a: {models: []}
          b: {models: [], models: ["*"]}
          a: {models: []}
        teams: {}
        """) == [
        "p.yaml:4:19: teams.b: duplicate key 'models' (first at line 4; YAML would silently keep only the last)",
        "p.yaml:5:3: teams: duplicate key 'a' (first at line 3; YAML would silently keep only the last)",
        "p.yaml:6:1: duplicate key 'teams' (first at line 2; YAML would silently keep only the last)",
    ]


def test_merge_keys_are_not_duplicates() -> None:
    policy = compiles("""\
        apiVersion: tollway/v1
        providers:
          openai: &openai {kind: openai, cluster: openai}
          openai-eu: {<<: *openai, cluster: openai-eu}
        """)
    assert policy.providers["openai-eu"].cluster == "openai-eu"


def test_wrong_api_version() -> None:
    assert issues("apiVersion: tollway/v2\n") == ["p.yaml:1:13: apiVersion: must be tollway/v1 (not 'tollway/v2')"]


def test_missing_api_version() -> None:
    assert issues("teams: {}\n") == ["p.yaml:1:1: apiVersion: required field missing"]


def test_the_readmes_policy_blocks_compile() -> None:
    """The README's policy example is a whole file that compiles (it named a provider and a team it
    did not define), and each of its other policy blocks compiles with it, its sections merged in."""
    blocks = [(README[:match.start()].count("\n") + 2, match.group(1).replace('sha256: "…"', f'sha256: "{SHA_A}"'))
              for match in re.finditer(r"^```yaml\n(.*?)^```$", README, re.M | re.S)]  # (a key's placeholder)
    whole = [(line, text) for line, text in blocks if text.startswith("apiVersion: tollway/v1\n")]
    assert len(whole) == 1 and len(blocks) >= 4, "the README's policy blocks moved: update this test"
    line, text = whole[0]
    base = yaml.safe_load(text)
    policy = compile_policy(text, f"README.md (the block at line {line})")
    assert set(policy.providers) >= {"openai", "anthropic"} and set(policy.teams) >= {"search", "support"}
    for line, block in blocks:
        merged = dict(base)
        for section, value in yaml.safe_load(block).items():
            merged[section] = {**base[section], **value} if isinstance(base.get(section), dict) else value
        compile_policy(yaml.safe_dump(merged, sort_keys=False), f"README.md (the block at line {line}, merged)")


# -- schema errors, in the policy's words --------------------------------------------------------


def test_unknown_field_with_a_suggestion() -> None:
    assert issues(HEAD + "teams:\n  search:\n    modles: [gpt-4o]\n") == [
        "p.yaml:8:3: teams.search.models: required field missing",
        "p.yaml:9:5: teams.search: unknown field 'modles' (did you mean 'models'?)",
    ]


def test_unknown_field_without_a_close_match_lists_the_fields() -> None:
    assert issues(HEAD + "colour: blue\n") == [
        "p.yaml:7:1: unknown field 'colour' (expected one of: apiVersion, providers, models, teams, budgets, "
        "rate_limits, shared_state, guardrails, routing, telemetry)"
    ]


def test_an_empty_guardrails_section_compiles_and_an_unknown_field_is_named() -> None:
    compiles(HEAD + "guardrails: {}\n")
    assert issues(HEAD + "guardrails:\n  monthly_usd: 100\n") == [
        "p.yaml:8:3: guardrails: unknown field 'monthly_usd' (expected one of: custom, injection, rules)"
    ]


def test_provider_kind_must_be_known() -> None:
    assert issues("apiVersion: tollway/v1\nproviders:\n  a: {kind: openia}\n") == [
        "p.yaml:3:13: providers.a.kind: must be one of openai, anthropic, azure-openai, openai-compatible "
        "(not 'openia'; did you mean 'openai'?)"
    ]


def test_sha256_must_be_lowercase_hex() -> None:
    assert issues(
        HEAD
        + """\
teams:
  search:
    keys:
      - id: search-prod
        sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08
    models: [gpt-4o]
"""
    ) == [
        "p.yaml:11:17: teams.search.keys[0].sha256: must be 64 lowercase hex characters "
        "(the sha256 of the key; see 'tollway keys create')"
    ]


def test_names_are_limited_to_a_sane_charset() -> None:
    assert issues("apiVersion: tollway/v1\nteams:\n  search team: {models: []}\n  ok: {models: [-x]}\n") == [
        "p.yaml:3:3: teams: team name 'search team': must be 1-128 letters, digits or '.-_:/', "
        "starting with a letter or digit",
        'p.yaml:4:17: teams.ok.models[0]: must be a model name, an alias, or "*"',
    ]
    compiles("apiVersion: tollway/v1\nteams:\n  ns/team.a_b-c:1: {models: []}\n")


def test_yaml_booleans_and_numbers_are_not_strings() -> None:
    assert issues(
        "apiVersion: tollway/v1\nproviders:\n  a: {kind: openai, cluster: 443}\nteams:\n  no: {models: []}\n"
    ) == [
        "p.yaml:3:30: providers.a.cluster: must be a string (YAML reads 443 as a number; put it in quotes)",
        "p.yaml:5:3: teams: team name 'no': must be a string (YAML reads no as a boolean; put it in quotes)",
    ]


def test_an_empty_key_is_named_where_it_is_written() -> None:
    """A `~` team name was reported as "team name 'teams'" at the `teams:` line, and the other teams'
    problems were lost (the entry that failed the schema was not left out of the reference checks)."""
    assert issues("apiVersion: tollway/v1\nteams:\n  a: {models: [gpt-4o]}\n  ~: {models: []}\n") == [
        "p.yaml:3:16: teams.a.models[0]: unknown model 'gpt-4o'",
        "p.yaml:4:3: teams: team name '~': must be a string (YAML reads ~ as empty)",
    ]


def test_every_pattern_has_its_meaning_in_words() -> None:
    """A value that does not match its pattern is told what is expected, never the raw expression."""
    assert issues(HEAD.replace("gpt-4o-mini: {provider: openai}", "gpt-4o-mini: {provider: openai, price: "
                               "{input: '$2.50', output: '10'}}") + """\
teams:
  search: {workloads: [w], models: ["*"]}
budgets:
  a: {team: search, usd: '-5', period: day}
  b: {team: search, usd: '1,000', period: day, timezone: 'Europe Berlin'}
guardrails:
  custom:
    tck: {pattern: 'TCK-[0-9]{6}', label: Ticket}
""") == [
        'p.yaml:6:50: models.gpt-4o-mini.price.input: must be an amount in USD like "2.50": up to 9 digits, then a '
        "point and up to 9 more; no sign, thousands separator or currency symbol",
        'p.yaml:10:26: budgets.a.usd: must be an amount in USD like "2.50": up to 9 digits, then a point and up to '
        "9 more; no sign, thousands separator or currency symbol",
        'p.yaml:11:26: budgets.b.usd: must be an amount in USD like "2.50": up to 9 digits, then a point and up to '
        "9 more; no sign, thousands separator or currency symbol",
        "p.yaml:11:58: budgets.b.timezone: must be an IANA time zone name, e.g. Europe/Berlin or UTC (no spaces)",
        "p.yaml:14:43: guardrails.custom.tck.label: must be 1-31 capital letters, digits or '_', starting with a "
        "letter (e.g. TICKET)",
    ]
    patterns: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, dict):
            patterns.update(value for key, value in node.items() if key == "pattern" and isinstance(value, str))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(json_schema())
    assert patterns and patterns <= set(PATTERN_MEANINGS)


def test_a_list_too_short_or_too_long_is_said_in_the_policys_words() -> None:
    targets = ", ".join(f"{{provider: openai, model: m{index}}}" for index in range(9))
    assert issues(HEAD + f"routing:\n  aliases:\n    a: {{targets: [{targets}]}}\n    b: {{targets: []}}\n") == [
        "p.yaml:9:9: routing.aliases.a.targets: must have at most 8 entries, not 9",
        "p.yaml:10:9: routing.aliases.b.targets: must not be empty (give at least one)",
    ]


def test_wrong_container_types() -> None:
    assert issues("apiVersion: tollway/v1\nproviders: [openai]\nteams:\n  a: {models: gpt-4o}\n") == [
        "p.yaml:2:1: providers: must be a mapping, not a list",
        "p.yaml:4:15: teams.a.models: must be a list, not a string",
    ]


def test_a_key_without_a_value_is_not_a_default() -> None:
    assert issues("apiVersion: tollway/v1\nproviders:\n  openai:\n    kind: openai\n    credential:\n") == [
        "p.yaml:5:5: providers.openai.credential: has no value (give one, or remove the line for the default)"
    ]


@pytest.mark.parametrize(
    "credential", ["{}", "{env: OPENAI_API_KEY, file: /var/run/secrets/openai}"], ids=["neither", "both"]
)
def test_credential_needs_exactly_one_source(credential: str) -> None:
    text = f"apiVersion: tollway/v1\nproviders:\n  openai:\n    kind: openai\n    credential: {credential}\n"
    assert issues(text) == ["p.yaml:5:5: providers.openai.credential: needs exactly one of 'env' or 'file'"]


def test_credential_env_must_be_a_variable_name() -> None:
    assert issues("apiVersion: tollway/v1\nproviders:\n  a: {kind: openai, credential: {env: sk-123}}\n") == [
        "p.yaml:3:39: providers.a.credential.env: must be an environment variable name "
        "(letters, digits, '_'; not starting with a digit)"
    ]


# -- references ---------------------------------------------------------------------------------


def test_model_provider_must_exist() -> None:
    assert issues(HEAD + "  o1:\n    provider: opnai\n") == [
        "p.yaml:8:15: models.o1.provider: unknown provider 'opnai' (did you mean 'openai'?)"
    ]


def test_team_models_must_exist() -> None:
    assert issues(HEAD + "teams:\n  search: {models: [gpt-4o-latest, gpt-4o-mni]}\n") == [
        "p.yaml:8:36: teams.search.models[1]: unknown model 'gpt-4o-mni' (did you mean 'gpt-4o-mini'?)"
    ]


def test_star_must_be_alone() -> None:
    assert issues(HEAD + 'teams:\n  search: {models: [gpt-4o, "*"]}\n') == [
        'p.yaml:8:29: teams.search.models[1]: "*" (every model) must be the only entry'
    ]


def test_team_models_hold_canonical_names() -> None:
    policy = compiles(HEAD + "teams:\n  search: {models: [gpt-4o-latest]}\n")
    assert policy.teams["search"].models == {"gpt-4o"}
    assert not policy.teams["search"].all_models
    target = policy.resolve("gpt-4o")
    assert target is not None and policy.may_use("search", target.public)


def test_an_alias_may_not_take_another_models_name_or_alias() -> None:
    assert issues(
        HEAD
        + """\
  o1:
    provider: openai
    aliases: [gpt-4o-mini, gpt-4o-latest, o1-latest, o1-latest, o1]
"""
    ) == [
        "p.yaml:9:15: models.o1.aliases[0]: alias 'gpt-4o-mini' is already the name of model 'gpt-4o-mini'",
        "p.yaml:9:28: models.o1.aliases[1]: alias 'gpt-4o-latest' is already an alias of model 'gpt-4o'",
        "p.yaml:9:54: models.o1.aliases[3]: alias 'o1-latest' is already an alias of model 'o1'",
        "p.yaml:9:65: models.o1.aliases[4]: alias 'o1' is the model's own name",
    ]


def test_a_key_may_appear_only_once() -> None:
    assert issues(
        HEAD
        + f"""\
teams:
  a:
    keys: [{{id: k1, sha256: {SHA_A}}}]
    models: []
  b:
    keys:
      - {{id: k2, sha256: {SHA_B}}}
      - {{id: k3, sha256: {SHA_A}}}
    models: []
"""
    ) == ["p.yaml:14:26: teams.b.keys[1].sha256: the same key is already listed at teams.a.keys[0]"]


def test_key_ids_are_unique_within_a_team() -> None:
    text = HEAD + f"teams:\n  a:\n    keys:\n      - {{id: k, sha256: {SHA_A}}}\n      - {{id: k, sha256: {SHA_B}}}\n"
    assert issues(text + "    models: []\n") == [
        "p.yaml:11:14: teams.a.keys[1].id: key id 'k' is already used by keys[0] of this team"
    ]
    compiles(
        HEAD + f"teams:\n  a: {{keys: [{{id: k, sha256: {SHA_A}}}], models: []}}\n"
        f"  b: {{keys: [{{id: k, sha256: {SHA_B}}}], models: []}}\n"
    )  # other teams may reuse an id


def test_a_workload_belongs_to_one_team() -> None:
    assert issues(HEAD + "teams:\n  a: {workloads: [w, x, x], models: []}\n  b: {workloads: [w], models: []}\n") == [
        "p.yaml:8:25: teams.a.workloads[2]: workload 'x' is listed twice in this team",
        "p.yaml:9:19: teams.b.workloads[0]: workload 'w' is already in team 'a'",
    ]


def test_kind_specific_provider_fields() -> None:
    assert issues(
        """\
apiVersion: tollway/v1
providers:
  azure:
    kind: azure-openai
  openai:
    kind: openai
    api_version: "2024-10-21"
    anthropic_version: "2023-06-01"
"""
    ) == [
        'p.yaml:3:3: providers.azure.api_version: required for kind azure-openai (e.g. "2024-10-21")',
        "p.yaml:7:5: providers.openai.api_version: only for kind azure-openai",
        "p.yaml:8:5: providers.openai.anthropic_version: only for kind anthropic",
    ]


def test_an_endpoint_is_parsed_whole() -> None:
    """What Envoy's cluster and the Host header take from an endpoint (its host, its port) is
    checked here, with its place: such a file used to pass, then fail every reload unseen."""
    lines = [
        "http://127.0.0.1:99999", "http://vllm:80O0", "http://[::1", "http://:8080/v1", "http://vllm:0",
        "http://vllm:", "http://[v1.x]:8000", "http://300.1.1.1", "http://user:pass@vllm", "http://exa%41mple",
        "http://[fe80::1%25eth0]:8000",
    ]
    found = issues("apiVersion: tollway/v1\nproviders:\n" + "".join(
        f'  p{index}: {{kind: openai-compatible, endpoint: "{url}"}}\n' for index, url in enumerate(lines)))
    port = "a port is a number from 1 to 65535"
    assert found == [
        f"p.yaml:3:43: providers.p0.endpoint: has port '99999': {port}",
        f"p.yaml:4:43: providers.p1.endpoint: has port '80O0': {port}",
        "p.yaml:5:43: providers.p2.endpoint: has a malformed host (an IPv6 address goes in brackets: "
        "http://[::1]:8000)",
        "p.yaml:6:43: providers.p3.endpoint: has no host (http://HOST or http://HOST:PORT)",
        f"p.yaml:7:43: providers.p4.endpoint: has port '0': {port}",
        f"p.yaml:8:43: providers.p5.endpoint: has port '': {port}",
        "p.yaml:9:43: providers.p6.endpoint: has a malformed host 'v1.x' (a DNS name, an IPv4 address, or an "
        "IPv6 address in brackets)",
        "p.yaml:10:43: providers.p7.endpoint: has a malformed host '300.1.1.1' (a DNS name, an IPv4 address, "
        "or an IPv6 address in brackets)",
        "p.yaml:11:43: providers.p8.endpoint: must not hold a user name or password (a provider's key goes in "
        "'credential')",
        "p.yaml:12:43: providers.p9.endpoint: has a malformed host 'exa%41mple' (a DNS name, an IPv4 address, "
        "or an IPv6 address in brackets)",
        "p.yaml:13:44: providers.p10.endpoint: has a malformed host 'fe80::1%25eth0' (a DNS name, an IPv4 "
        "address, or an IPv6 address in brackets)",  # a zone id Envoy takes in no cluster address
    ]
    good = ["http://[::1]:8000", "https://llm.example.com:8443/v1", "http://10.0.0.5:8000", "http://vllm_1.local",
            "http://vllm.llm-serving.svc.cluster.local.:8000/v1",  # absolute: no search domains tried
            "https://llm.example.com:443/v1", "http://vllm:80", "https://vllm:80"]
    policy = compiles("apiVersion: tollway/v1\nproviders:\n" + "".join(
        f'  p{index}: {{kind: openai-compatible, endpoint: "{url}"}}\n' for index, url in enumerate(good)))
    assert [p.host for p in policy.providers.values()] == [
        "[::1]:8000", "llm.example.com:8443", "10.0.0.5:8000", "vllm_1.local",
        "vllm.llm-serving.svc.cluster.local:8000",  # the Host header: without the absolute name's dot
        "llm.example.com", "vllm", "vllm:80"]  # nor the scheme's default port


def test_an_endpoint_is_a_base_url() -> None:
    """An endpoint holding an API's path (the URL of a call) was accepted, and every request went to
    a doubled path (a 404); a query string or fragment was accepted and dropped. Each is refused
    with the base URL to write."""
    lines = [
        ("openai-compatible", "https://llm-gw.corp/v1/chat/completions"),
        ("anthropic", "https://api.anthropic.com/v1/messages"),
        ("openai", "https://llm-gw.corp/openai/v1/responses/"),
        ("azure-openai", "https://contoso.openai.azure.com/openai/deployments/gpt4o/chat/completions"),
        ("azure-openai", "https://apim.corp/az/openai/deployments/gpt4o"),
        ("azure-openai", "https://contoso.openai.azure.com/openai/v1?api-version=2024-10-21"),
        ("openai-compatible", "http://vllm:8000/v1#models"),
        ("azure-openai", "https://apim.corp/openai-gw/openai/deployments/gpt4o"),
        ("openai-compatible", "https://res.services.ai.azure.com/models/chat/completions"),
    ]
    found = issues("apiVersion: tollway/v1\nproviders:\n" + "".join(
        f'  p{index}: {{kind: {kind}, endpoint: "{url}"{", api_version: v1" if kind == "azure-openai" else ""}}}\n'
        for index, (kind, url) in enumerate(lines)))
    assert found == [
        "p.yaml:3:43: providers.p0.endpoint: has the API path '/chat/completions' in it: each request's own path "
        "goes after the base URL (a chat request would go to /v1/chat/completions/chat/completions); write "
        '"https://llm-gw.corp/v1"',
        "p.yaml:4:35: providers.p1.endpoint: has the API path '/v1/messages' in it: each request's own path goes "
        "after the base URL (a Messages request would go to /v1/messages/v1/messages); write "
        '"https://api.anthropic.com"',
        "p.yaml:5:32: providers.p2.endpoint: has the API path '/responses' in it: each request's own path goes "
        "after the base URL (a chat request would go to /openai/v1/responses/chat/completions); write "
        '"https://llm-gw.corp/openai/v1"',
        "p.yaml:6:38: providers.p3.endpoint: has the API path '/openai/deployments/gpt4o/chat/completions' in it: "
        "Tollway builds each request's path behind the base URL (the deployment is a model's or target's "
        "'model'); write \"https://contoso.openai.azure.com\"",
        "p.yaml:7:38: providers.p4.endpoint: has the API path '/openai/deployments/gpt4o' in it: Tollway builds "
        "each request's path behind the base URL (the deployment is a model's or target's 'model'); write "
        '"https://apim.corp/az"',
        "p.yaml:8:38: providers.p5.endpoint: has a query string ('?api-version=…'): an endpoint is a base "
        "URL, and nothing after its path is sent (the api-version goes in 'api_version'); write "
        '"https://contoso.openai.azure.com/openai/v1"',
        "p.yaml:9:43: providers.p6.endpoint: has a fragment ('#…'): an endpoint is a base URL, and nothing "
        'after its path is sent; write "http://vllm:8000/v1"',
        "p.yaml:10:38: providers.p7.endpoint: has the API path '/openai/deployments/gpt4o' in it: Tollway builds "
        "each request's path behind the base URL (the deployment is a model's or target's 'model'); write "
        '"https://apim.corp/openai-gw"',
        "p.yaml:11:43: providers.p8.endpoint: has the API path '/chat/completions' in it: each request's own path "
        "goes after the base URL (a chat request would go to /models/chat/completions/chat/completions); write "
        '"https://res.services.ai.azure.com/models"',
    ]
    # What to write instead: base URLs, as the SDKs take them.
    good = [("openai-compatible", "https://llm-gw.corp/v1"), ("anthropic", "https://api.anthropic.com"),
            ("anthropic", "https://llm-gw.corp/claude/v1/"), ("openai", "https://llm-gw.corp/openai/v1"),
            ("azure-openai", "https://contoso.openai.azure.com/openai/v1/"), ("azure-openai", "https://apim.corp/az"),
            # Whole path segments: an API gateway's prefix named like an API part is no API path (both
            # were refused, and `tollway serve` exited on them), nor is Azure AI Foundry's documented
            # inference base URL, which ends with /models.
            ("azure-openai", "https://apim.corp.net/openai-gw"), ("azure-openai", "https://apim.corp.net/openai-gw/openai"),
            ("openai-compatible", "https://res.services.ai.azure.com/models"),
            ("openai-compatible", "https://llm-gw.corp/v1/my-completions")]
    compiles("apiVersion: tollway/v1\nproviders:\n" + "".join(
        f'  p{index}: {{kind: {kind}, endpoint: "{url}"{", api_version: v1" if kind == "azure-openai" else ""}}}\n'
        for index, (kind, url) in enumerate(good)))


def test_no_provider_takes_the_cluster_that_reaches_tollway() -> None:
    """Envoy keeps its bootstrap's cluster: such a file used to pass, then time every reload out."""
    assert issues("""\
apiVersion: tollway/v1
providers:
  local: {kind: openai-compatible, cluster: tollway_ext_proc, endpoint: "http://10.0.0.5:8000"}
  tollway_ext_proc: {kind: openai-compatible, endpoint: "http://10.0.0.6:8000"}
""") == [
        "p.yaml:3:45: providers.local.cluster: 'tollway_ext_proc' is Envoy's cluster that reaches Tollway: give "
        "the provider's cluster another name",
        "p.yaml:4:3: providers.tollway_ext_proc: 'tollway_ext_proc' is Envoy's cluster that reaches Tollway: give "
        "the provider's cluster another name",
    ]


def test_providers_sharing_a_cluster_reach_one_endpoint() -> None:
    """Envoy builds a shared cluster from one provider's endpoint: another provider's requests, with
    its key, went to that server (`policy check` said OK)."""
    assert issues("""\
apiVersion: tollway/v1
providers:
  vllm-a: {kind: openai-compatible, endpoint: "http://10.0.0.5:8000", credential: {env: KEY_A}}
  vllm-b: {kind: openai-compatible, endpoint: "http://10.0.0.6:8000", credential: {env: KEY_B}, cluster: vllm-a}
  vllm-tls: {kind: openai-compatible, endpoint: "https://10.0.0.5:8000", cluster: vllm-a}
  openai-b: {kind: openai, cluster: vllm-a}
  openai: {kind: openai-compatible, endpoint: "http://10.0.0.5:8000"}
  openai-a: {kind: openai, cluster: openai}
""") == [
        "p.yaml:4:106: providers.vllm-b.cluster: shares cluster 'vllm-a' with provider 'vllm-a', which reaches "
        "http://10.0.0.5:8000, but reaches http://10.0.0.6:8000: a cluster has one endpoint, and this provider's "
        "requests (with its key) would go to the other's (give it a cluster of its own)",
        "p.yaml:5:83: providers.vllm-tls.cluster: shares cluster 'vllm-a' with provider 'vllm-a', which reaches "
        "http://10.0.0.5:8000, but reaches https://10.0.0.5:8000: a cluster has one endpoint, and this provider's "
        "requests (with its key) would go to the other's (give it a cluster of its own)",
        "p.yaml:6:37: providers.openai-b.cluster: shares cluster 'vllm-a' with provider 'vllm-a', which reaches "
        "http://10.0.0.5:8000, but reaches https://api.openai.com (kind openai's public API): a cluster has one "
        "endpoint, and this provider's requests (with its key) would go to the other's (give it a cluster of its own)",
        "p.yaml:8:37: providers.openai-a.cluster: shares cluster 'openai' with provider 'openai', which reaches "
        "http://10.0.0.5:8000, but reaches https://api.openai.com (kind openai's public API): a cluster has one "
        "endpoint, and this provider's requests (with its key) would go to the other's (give it a cluster of its own)",
    ]
    # What sharing is for: several providers on one endpoint (other keys, kinds or base paths), and a
    # provider without an endpoint, which goes wherever its cluster does.
    policy = compiles("""\
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: KEY_A}}
  openai-b: {kind: openai, cluster: openai, credential: {env: KEY_B}}
  openai-proxy: {kind: openai-compatible, cluster: openai, endpoint: "https://api.openai.com:443/v1"}
  gw-openai: {kind: openai-compatible, cluster: gw, endpoint: "https://llm-gw.corp/openai/v1"}
  gw-claude: {kind: anthropic, cluster: gw, endpoint: "https://llm-gw.corp/claude"}
  gw-local: {kind: openai-compatible, cluster: gw}
""")
    assert [p.cluster for p in policy.providers.values()] == ["openai", "openai", "openai", "gw", "gw", "gw"]


# -- everything at once -------------------------------------------------------------------------


def test_every_error_is_reported_at_once() -> None:
    """Schema errors do not hide reference errors elsewhere, nor are they reported twice."""
    found = issues(
        f"""\
apiVersion: tollway/v1
providers:
  openai: {{kind: openai, credential: {{env: OPENAI_API_KEY}}, colour: red}}
  broken: {{kind: nope}}
models:
  gpt-4o: {{provider: openai}}
  o1: {{provider: broken}}
  o3: {{provider: missing}}
teams:
  a: {{keys: [{{id: k, sha256: {SHA_A}}}], models: [gpt-4o, o1, gpt-5]}}
  b: {{keys: [{{id: k, sha256: {SHA_A}}}], models: [o3]}}
  c: {{models: [gpt-4o], workload: [w]}}
"""
    )
    assert found == [
        "p.yaml:3:61: providers.openai: unknown field 'colour' (expected one of: kind, cluster, endpoint, "
        "credential, anthropic_version, api_version, stored_responses)",
        "p.yaml:4:18: providers.broken.kind: must be one of openai, anthropic, azure-openai, openai-compatible "
        "(not 'nope')",
        # o1's provider is broken, not missing: not reported twice
        "p.yaml:8:18: models.o3.provider: unknown provider 'missing'",
        "p.yaml:10:119: teams.a.models[2]: unknown model 'gpt-5' (did you mean 'gpt-4o'?)",
        "p.yaml:11:30: teams.b.keys[0].sha256: the same key is already listed at teams.a.keys[0]",
        "p.yaml:12:25: teams.c: unknown field 'workload' (did you mean 'workloads'?)",
    ]


# -- the CLI ------------------------------------------------------------------------------------


def test_policy_check_good_files(capsys: pytest.CaptureFixture[str]) -> None:
    example, minimal = str(POLICIES / "example.yaml"), str(POLICIES / "minimal.yaml")
    assert main(["policy", "check", example, minimal]) == 0
    out = capsys.readouterr().out.splitlines()
    version = compile_policy(EXAMPLE).version
    assert out == [
        f"{example}: OK (version {version}; 4 providers, 8 models, 4 teams, 2 aliases)",
        f"{minimal}: OK (version {compile_policy(MINIMAL).version}; 1 provider, 1 model, 1 team)",
    ]


def test_policy_check_reports_every_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: tollway/v2\nteams:\n  a: {modles: []}\n")
    good = str(POLICIES / "minimal.yaml")
    assert main(["policy", "check", str(bad), good, str(tmp_path / "missing.yaml")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{bad}:1:13: apiVersion: must be tollway/v1 (not 'tollway/v2')",
        f"{bad}:3:3: teams.a.models: required field missing",
        f"{bad}:3:7: teams.a: unknown field 'modles' (did you mean 'models'?)",
        f"{bad}: FAILED (3 errors)",
        f"{good}: OK (version {compile_policy(MINIMAL).version}; 1 provider, 1 model, 1 team)",
        f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory",
    ]


def test_policy_check_prints_notes_and_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A note (here a $0 budget, refused before: `tollway serve` exited 2 on it) is printed before
    the file's OK, and the exit status stays 0."""
    noted = tmp_path / "zero.yaml"
    text = (HEAD + "teams:\n  b: {models: [gpt-4o], keys: [{id: b, sha256: " + SHA_A + "}]}\n"
            "budgets:\n  freeze-b: {team: b, usd: \"0\", period: month}\n")
    noted.write_text(text)
    assert main(["policy", "check", str(noted)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{noted}:10:28: budgets.freeze-b.usd: note: $0: a hard budget refuses every request in its scope, a soft "
        "one alerts on the first one that spends",
        f"{noted}: OK (version {compile_policy(text).version}; 1 provider, 2 models, 1 team; 1 note)",
    ]


def test_policy_check_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["policy", "check"])
    assert exited.value.code == 2
    assert "FILE" in capsys.readouterr().err


def test_policy_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    out = capsys.readouterr().out
    schema = json.loads(out)
    assert out.startswith('{\n  "')  # indent 2
    assert set(schema["properties"]) >= {"apiVersion", "providers", "models", "teams", "budgets"}
    assert schema["required"] == ["apiVersion"]
    assert schema["additionalProperties"] is False
    provider = schema["$defs"]["ProviderSpec"]
    assert provider["properties"]["kind"]["enum"] == ["openai", "anthropic", "azure-openai", "openai-compatible"]
    assert "anyOf" not in provider["properties"]["cluster"]  # an explicit null is not allowed


def _created_key(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str, str]:
    """Run ``keys create``: the printed output, key and policy line."""
    assert main(["keys", "create", *args]) == 0
    out = capsys.readouterr().out
    [key] = re.findall(r"^    (tw-\S+)$", out, re.MULTILINE)
    [line] = re.findall(r"^    (- \{id: .*\})$", out, re.MULTILINE)
    return out, key, line


def test_keys_create_prints_the_key_once_and_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    out, key, line = _created_key(capsys, "--team", "dev", "--id", "dev-laptop")
    assert re.fullmatch(r"tw-[A-Za-z0-9_-]{43}", key)
    assert line == f"- {{id: dev-laptop, sha256: {key_digest(key)}}}"
    # Every key made is one the guardrails' tollway_key detector finds (in a prompt, a trace).
    assert all(builtin().find(f"key {new_key()}.", ["tollway_key"]) for _ in range(2_000))
    assert "only time the key is shown" in out and "teams.dev.keys" in out
    assert out.count(key) == 1


def test_keys_create_line_pasted_into_a_policy_authenticates(capsys: pytest.CaptureFixture[str]) -> None:
    _, key, line = _created_key(capsys, "--team", "dev")
    assert re.fullmatch(r"- \{id: dev-\d{8}-[0-9a-f]{4}, sha256: [0-9a-f]{64}\}", line)
    policy = compile_policy(MINIMAL + f"    keys:\n      {line}\n")
    principal = policy.authenticate(key)
    assert principal is not None and principal.team == "dev"
    assert principal.key_id == re.findall(r"id: (\S+),", line)[0]
    _, other, _ = _created_key(capsys, "--team", "dev")
    assert other != key and policy.authenticate(other) is None


@pytest.mark.parametrize("key_id", ["2026", "true", "0x1F", "12:30"])
def test_keys_create_quotes_an_id_yaml_would_read_as_something_else(capsys: pytest.CaptureFixture[str],
                                                                     key_id: str) -> None:
    _, key, line = _created_key(capsys, "--team", "dev", "--id", key_id)
    assert line == f'- {{id: "{key_id}", sha256: {key_digest(key)}}}'
    principal = compile_policy(MINIMAL + f"    keys:\n      {line}\n").authenticate(key)
    assert principal is not None and principal.key_id == key_id


def test_keys_create_refuses_bad_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--team", "my team"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--team 'my team' must be 1-128 letters" in captured.err


def test_keys_create_with_a_policy_warns_of_a_team_it_has_not(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    """A key for a team no policy has never works: --policy says so on stderr (the key is still made:
    the team may be added with its line)."""
    example = str(POLICIES / "example.yaml")
    assert main(["keys", "create", "--team", "serach", "--policy", example]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^    tw-\S+$", out, re.MULTILINE) and "teams.serach.keys" in out
    assert err == (f"tollway keys create: warning: {example} has no team 'serach' (did you mean 'search'?): "
                   "add it under teams with the line below, or the key admits no one\n")
    assert main(["keys", "create", "--team", "search", "--policy", example]) == 0
    assert capsys.readouterr().err == ""
    missing = tmp_path / "missing.yaml"
    assert main(["keys", "create", "--team", "search", "--policy", str(missing)]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == f"tollway keys create: {missing}: cannot read: No such file or directory\n"
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: tollway/v1\nteams: [\n")
    assert main(["keys", "create", "--team", "search", "--policy", str(broken)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.startswith(f"{broken}:")


# -- robustness ---------------------------------------------------------------------------------

EXAMPLE_LINES = EXAMPLE.splitlines(keepends=True)


def _compiles_or_policy_error(text: str) -> None:
    try:
        compile_policy(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.errors
        for issue in exc.errors:
            assert issue.line >= 1 and issue.column >= 1 and issue.message


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(EXAMPLE_LINES) - 1), min_size=1, max_size=4, unique=True))
def test_deleting_lines_never_crashes(deleted: list[int]) -> None:
    _compiles_or_policy_error("".join(line for i, line in enumerate(EXAMPLE_LINES) if i not in deleted))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(EXAMPLE)), st.sampled_from(["", " ", "\n", ":", "- ", "{", "]", "&a ", "*a", "'", "\t", "~"]))
def test_splicing_text_never_crashes(offset: int, insert: str) -> None:
    _compiles_or_policy_error(EXAMPLE[:offset] + insert + EXAMPLE[offset:])


def test_price_overrides_are_exact_decimals() -> None:
    from decimal import Decimal

    from ext_proc.policy.compile import PolicyError, compile_policy

    text = """apiVersion: tollway/v1
providers: {local: {kind: openai-compatible}}
models:
  llama: {provider: local, price: {input: "0.10", output: "0.20", cache_read: "0.05"}}
teams: {t: {workloads: [w], models: [llama]}}
"""
    price = compile_policy(text).resolve("llama").price  # type: ignore[union-attr]
    assert price is not None and (price.input, price.output, price.cache_read, price.cache_write) == (
        Decimal("0.10"), Decimal("0.20"), Decimal("0.05"), None)
    with pytest.raises(PolicyError) as caught:
        compile_policy(text.replace('input: "0.10"', "input: 0.1"))
    assert "models.llama.price.input: must be a string" in str(caught.value)


# -- what a policy needs loaded ------------------------------------------------------------------


def test_the_encodings_a_policy_counts_with() -> None:
    """The zygote loads only these (``tollway serve`` passes them on): cl100k_base's 23 MB
    only for a policy with a model that counts with it, by public or provider name."""
    assert compile_policy(MINIMAL, "minimal.yaml").encodings() == {"o200k_base"}
    assert compile_policy(EXAMPLE, "example.yaml").encodings() == {"o200k_base", "cl100k_base"}  # its embeddings
    legacy = "  legacy: {provider: openai, model: gpt-4-0613}"
    older = compiles(HEAD.replace("  gpt-4o-mini: {provider: openai}", legacy))
    assert older.encodings() == {"o200k_base", "cl100k_base"}


def test_a_worker_loads_the_encodings_it_is_told() -> None:
    code = ("from ext_proc.server.accounting import warm_up; from ext_proc.llm import tokens; warm_up(); "
            "print(','.join(sorted(tokens.load_times_ms())))")
    for told, loaded in (("o200k_base", "o200k_base"), ("", "cl100k_base,o200k_base")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "TOLLWAY_ENCODINGS": told})
        assert out.stdout.strip() == loaded


def test_a_key_pasted_where_a_name_belongs_is_refused_and_never_repeated() -> None:
    """A Tollway key (or a provider key) as a key's id, a budget's key or a team's model: the check
    says where, never the value (its messages reach the log, /readyz and the console), and an id
    that is the key itself is refused: it would be in every record and metric label."""
    key = "tw-" + "Zq3x9" * 8
    digest = "0" * 64
    text = f"""apiVersion: tollway/v1
providers: {{openai: {{kind: openai, credential: {{env: OPENAI_API_KEY}}}}}}
models: {{gpt-4o: {{provider: openai}}, m2: {{provider: "sk-proj-{'B' * 40}"}}}}
teams:
  dev:
    keys: [{{id: "{key}", sha256: "{digest}"}}]
    models: [gpt-4o, "sk-proj-{'A' * 40}"]
budgets:
  b: {{key: "{key}x", usd: "5", period: month}}
"""
    with pytest.raises(PolicyError) as caught:
        compile_policy(text, "p.yaml")
    said = str(caught.value)
    assert key not in said and "sk-proj-" not in said and "BBBB" not in said, said
    assert "this id looks like the key itself" in said and said.count("(a value that looks like a key: not shown)") == 3



AUDIT_KEY = "sk-proj-" + "Ab1" * 15 + "T3BlbkFJ" + "xY9" * 10  # the shape OpenAI's project keys have


@pytest.mark.parametrize(("text", "said"), [
    (f"{HEAD}budgets: {{{AUDIT_KEY}: {{usd: '5'}}}}\n",
     "budgets[<a value that looks like a key: not shown>].period: required field missing"),
    (f"apiVersion: {AUDIT_KEY}\n",
     "apiVersion: must be tollway/v1 (not (a value that looks like a key: not shown))"),
    (f"apiVersion: tollway/v1\n{AUDIT_KEY}: 1\n",
     "unknown field (a value that looks like a key: not shown) (expected one of: apiVersion,"),
    (f"{HEAD}routing: {{aliases: {{{AUDIT_KEY}: {{targets: [nosuch]}}}}}}\n",
     "routing.aliases[<a value that looks like a key: not shown>].targets[0]: must be a mapping"),
], ids=["budget-name", "api-version", "top-level-field", "alias-name"])
def test_a_key_in_a_problems_path_or_message_is_never_repeated(text: str, said: str) -> None:
    """A key pasted as a budget's or an alias's name, a top-level field or the apiVersion: the issue
    says where and what, never the key (issues reach CI logs, the service's log and /readyz)."""
    with pytest.raises(PolicyError) as caught:
        compile_policy(text, "p.yaml")
    shown = str(caught.value)
    assert said in shown and AUDIT_KEY not in shown and "T3BlbkFJ" not in shown, shown


def _variants(data: object, put: object) -> list[object]:
    """``data`` with ``put`` as each mapping key in turn (a key renamed, a key added) and as each scalar."""
    import copy

    out: list[object] = []

    def walk(node: object, path: tuple[object, ...]) -> None:
        if isinstance(node, dict):
            for key in list(node):
                for renamed in (True, False):
                    whole = copy.deepcopy(data)
                    here = whole
                    for part in path:
                        here = here[part]  # type: ignore[index]
                    if renamed:
                        here[put] = here.pop(key)  # type: ignore[union-attr]
                    else:
                        here[put] = copy.deepcopy(here[key])  # type: ignore[index]
                    out.append(whole)
                walk(node[key], (*path, key))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, (*path, index))
        else:
            whole = copy.deepcopy(data)
            here = whole
            for part in path[:-1]:
                here = here[part]  # type: ignore[index]
            here[path[-1]] = put  # type: ignore[index]
            out.append(whole)

    walk(data, ())
    return out


def test_a_key_anywhere_in_a_policy_never_appears_in_policy_checks_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever the place (any mapping key, any value, of the example policy), a key-shaped string
    never comes back out of `tollway policy check` (its errors, notes or verdict)."""
    from ext_proc.policy.cli_policy import check_file

    keys = [AUDIT_KEY, "sk-ant-api03-" + "Qw7_" * 23 + "AA", "ghp_" + "a1B2" * 9, "tw-" + "Zq3x9" * 8,
            "AKIA" + "Z7Q2" * 4]
    base = yaml.safe_load(EXAMPLE)
    seen = 0
    for number, variant in enumerate(_variants(base, "<KEY>")):
        key = keys[number % len(keys)]
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(variant, sort_keys=False).replace("<KEY>", key))
        check_file(str(path))
        out = capsys.readouterr().out
        secret = key.split("-")[-1] if key.startswith("tw-") else key[-16:]
        assert key not in out and secret not in out, (number, out)
        seen += 1
    assert seen > 300


@pytest.mark.parametrize(("text", "said"), [
    (f"{HEAD}  tw-fast-model: {{provider: opnai}}\n", "models.tw-fast-model.provider: unknown provider 'opnai'"),
    (f"{HEAD}teams:\n  tw-platform-search: {{workloads: [s], models: [gpt-4o, gpt-4o-mni]}}\n",
     "teams.tw-platform-search.models[1]: unknown model 'gpt-4o-mni' (did you mean 'gpt-4o-mini'?)"),
    (f"{HEAD}teams:\n  tw-platform-search: {{workloads: [s], models: [gpt-4o]}}\n"
     "budgets:\n  daily: {team: tw-platform-serch, usd: '150', period: day}\n",
     "budgets.daily.team: unknown team 'tw-platform-serch' (did you mean 'tw-platform-search'?)"),
    (f"{HEAD}  'ft:gpt-4o:tw-research:eval:AbCdEfGh': {{provider: openai}}\n"
     "teams:\n  a: {workloads: [s], models: ['ft:gpt-4o:tw-research:eval:AbCdEfGx']}\n",
     "unknown model 'ft:gpt-4o:tw-research:eval:AbCdEfGx' (did you mean 'ft:gpt-4o:tw-research:eval:AbCdEfGh'?)"),
    (f"{HEAD}teams:\n  a: {{workloads: [s], models: [my-tw-experimental-model]}}\n",
     "teams.a.models[0]: unknown model 'my-tw-experimental-model'"),
    (f"{HEAD}teams:\n  tw-search:\n    workloads: [s]\n    models: [gpt-4o]\n"
     f"    keys: [{{id: tw-search-20261207-ab12, sha256: '{'0' * 64}'}}]\n"
     "budgets:\n  b: {key: tw-search-20261207-ab13, usd: '5', period: month}\n",
     "budgets.b.key: unknown key id 'tw-search-20261207-ab13'"),
], ids=["model-name", "team-name", "suggestion", "fine-tune-name", "tw-inside", "key-id"])
def test_a_name_starting_with_tw_is_shown_not_hidden_as_a_key(text: str, said: str) -> None:
    """Only what the credential detectors find, or a Tollway key's shape (``tw-`` and 40 URL-safe
    characters or more), is hidden: a team, a model, a suggestion or a key id that merely starts with
    (or holds) ``tw-`` is shown as written."""
    with pytest.raises(PolicyError) as caught:
        compile_policy(text, "p.yaml")
    shown = str(caught.value)
    assert said in shown and "not shown" not in shown, shown


def test_a_hand_made_tollway_key_is_hidden_though_the_prompt_detector_would_pass_it() -> None:
    """``tw-`` and 40 hex digits (made by hand, not by ``tollway keys create``) fails the
    ``tollway_key`` detector's check but has its shape: a policy check hides it all the same."""
    key = "tw-" + "0123456789abcdef" * 2 + "01234567"
    with pytest.raises(PolicyError) as caught:
        compile_policy(f"{HEAD}teams:\n  a: {{workloads: [s], models: ['{key}']}}\n", "p.yaml")
    shown = str(caught.value)
    assert key not in shown and "89abcdef" not in shown and "(a value that looks like a key: not shown)" in shown


def test_an_endpoints_query_values_are_never_shown() -> None:
    """A key pasted into an endpoint's query string was refused with the whole query string in the
    message (the log, /readyz's last_reload_error, `tollway policy check`): its names are shown."""
    key = "sk-test-AUDDurlQ0123456789abcdef"  # fake
    found = issues(f"""\
apiVersion: tollway/v1
providers:
  a: {{kind: openai-compatible, endpoint: "http://10.0.0.5:8000/?key={key}&api-version=1#frag{key}"}}
  b: {{kind: openai-compatible, endpoint: "http://10.0.0.6:8000/v1?token={key}", cluster: a}}
""")
    assert found and not any(key[:12] in issue or key[-12:] in issue for issue in found)
    assert "('?key=…&api-version=…#…')" in found[0]
    assert any("reaches http://10.0.0.5:8000/?key=…&api-version=…#…" in issue for issue in found)


def test_a_key_written_as_a_port_or_a_kind_is_not_shown() -> None:
    key = "sk-test-AUDDurlQ0123456789abcdef"  # fake: no issuer's full shape, so not hidden as a key
    found = issues(f"""\
apiVersion: tollway/v1
providers:
  a: {{kind: openai-compatible, endpoint: "http://10.0.0.5:{key}"}}
  b: {{kind: {key}}}
""")
    assert len(found) == 2 and not any(key[:12] in issue for issue in found)
    assert "has a port that is not a number from 1 to 65535" in found[0]
    assert "(not (a value that looks like a key: not shown))" in found[1]
    assert issues("apiVersion: tollway/v1\nproviders:\n  a: {kind: openai-compatible, endpoint: 'http://h:99999'}\n"
                  ) == ["p.yaml:3:42: providers.a.endpoint: has port '99999': a port is a number from 1 to 65535"]


@pytest.mark.parametrize(("url", "shown"), [
    ("https://h/v1?key=SECRET&api-version=2024", "https://h/v1?key=…&api-version=…"),
    ("https://h/v1?SECRETSECRET", "https://h/v1?…"),
    ("https://h/v1#SECRET?x=1", "https://h/v1#…"),
    ("https://h/v1?x=1#SECRET", "https://h/v1?x=…#…"),
    ("https://h/v1", "https://h/v1"),
])
def test_an_endpoint_is_shown_without_what_follows_its_path(url: str, shown: str) -> None:
    """A key pasted into an endpoint's query (a value, or a bare token) or fragment is never shown."""
    from ext_proc.policy.compile import shown_url

    assert shown_url(url) == shown
