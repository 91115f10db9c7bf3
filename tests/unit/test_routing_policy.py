"""Routing aliases: how they compile (or fail to, with file, line and field), and how decide.py routes them."""

from __future__ import annotations

import functools
import random
import textwrap
from decimal import Decimal

import pytest

from ext_proc.core import upstream
from ext_proc.llm import apis
from ext_proc.llm.errors import ClientError
from ext_proc.policy import decide
from ext_proc.policy.compile import PolicyError, compile_policy
from ext_proc.policy.compiled import CompiledPolicy, Principal, Target

PROVIDERS = """\
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
  anthropic: {kind: anthropic, credential: {env: ANTHROPIC_API_KEY}}
  azure: {kind: azure-openai, cluster: azure-eu, api_version: "2024-10-21"}
  local: {kind: openai-compatible}
"""  # lines 1-6


def compiles(text: str) -> CompiledPolicy:
    return compile_policy(textwrap.dedent(text), "p.yaml")


def issues(text: str) -> list[str]:
    """Every issue of a policy that must not compile, as printed."""
    with pytest.raises(PolicyError) as caught:
        compile_policy(textwrap.dedent(text), "p.yaml")
    assert str(caught.value) == "\n".join(str(issue) for issue in caught.value.errors)
    return [str(issue) for issue in caught.value.errors]


def served_by(targets: tuple[Target, ...]) -> list[tuple[str, str]]:
    return [(t.provider.name, t.upstream_model) for t in targets]


# -- compiling -----------------------------------------------------------------------------------

COMPILED = (
    PROVIDERS
    + """\
models:
  gpt-4o:
    provider: openai
    model: gpt-4o-2024-08-06
    context_window: 128000
    max_output_tokens: 16384
    price: {input: "2.50", output: "10"}
  gpt-4o-mini: {provider: openai, context_window: 64000}
  claude: {provider: anthropic, model: claude-sonnet-4-5, context_window: 200000, max_output_tokens: 8192}
routing:
  aliases:
    chat:
      targets:
        - {provider: anthropic, model: claude-sonnet-4-5, priority: 2}
        - {provider: openai, model: gpt-4o-2024-08-06, priority: 1, context_window: 1000}
        - {provider: local, model: llama, priority: 2}
        - {provider: azure, model: gpt-4o-2024-08-06}
      teams:
        ops:
          targets:
            - {provider: local, model: llama}
            - {provider: openai, model: gpt-4o-mini}
    split:
      strategy: weighted
      targets:
        - {provider: openai, model: gpt-4o-2024-08-06, weight: 80, priority: 5}
        - provider: anthropic
          model: claude-sonnet-4-5
          weight: 20
          priority: 1
          max_output_tokens: 1024
          price: {input: "3", output: "15"}
        - {provider: local, model: llama, weight: 0}
teams:
  ops: {models: [chat, gpt-4o]}
  app: {models: ["*"]}
"""
)


def test_an_alias_compiles_to_its_plans() -> None:
    policy = compiles(COMPILED)
    assert set(policy.aliases) == {"chat", "split"}
    chat = policy.alias("chat")
    assert chat is not None and chat.name == "chat"
    assert policy.alias("gpt-4o") is None  # a model, not a routing alias
    assert policy.resolve("chat") is None  # aliases are not models

    # explicit priorities sort (lower first); ties keep list order; no priority = the list position (3)
    plan = chat.plan
    assert plan.strategy == "priority" and plan.weights == ()
    assert served_by(plan.targets) == [
        ("openai", "gpt-4o-2024-08-06"),
        ("anthropic", "claude-sonnet-4-5"),
        ("local", "llama"),
        ("azure", "gpt-4o-2024-08-06"),
    ]
    assert all(t.public == "chat" for t in plan.targets)
    for target in plan.targets:  # the very Provider objects of the policy
        assert target.provider is policy.providers[target.provider.name]
    assert plan.targets[3].provider.cluster == "azure-eu"

    # per-team plans; other teams get the alias's own plan
    ops = chat.plan_for("ops")
    assert ops is chat.teams["ops"] and set(chat.teams) == {"ops"}
    assert served_by(ops.targets) == [("local", "llama"), ("openai", "gpt-4o-mini")]
    assert chat.plan_for("app") is plan

    # weighted: the weights follow the targets into priority order
    split = policy.aliases["split"].plan
    assert split.strategy == "weighted"
    assert served_by(split.targets) == [
        ("anthropic", "claude-sonnet-4-5"),
        ("local", "llama"),
        ("openai", "gpt-4o-2024-08-06"),
    ]
    assert split.weights == (20, 0, 80)


def test_a_target_inherits_from_the_models_entry_of_the_same_provider_and_model() -> None:
    policy = compiles(COMPILED)
    openai, anthropic, local, azure = policy.aliases["chat"].plan.targets
    # its own context window wins; the output limit and the price come from models.gpt-4o
    assert (openai.context_window, openai.max_output_tokens) == (1000, 16384)
    assert openai.price is not None and (openai.price.input, openai.price.output) == (Decimal("2.50"), Decimal("10"))
    assert (anthropic.context_window, anthropic.max_output_tokens, anthropic.price) == (200000, 8192, None)
    # no models entry: nothing known
    assert (local.context_window, local.max_output_tokens, local.price) == (None, None, None)
    # the same model name at another provider is another model
    assert (azure.context_window, azure.max_output_tokens, azure.price) == (None, None, None)
    # a models entry without "model:" is matched by its public name
    mini = policy.aliases["chat"].plan_for("ops").targets[1]
    assert (mini.upstream_model, mini.context_window) == ("gpt-4o-mini", 64000)

    claude, _, gpt = policy.aliases["split"].plan.targets
    assert (claude.context_window, claude.max_output_tokens) == (200000, 1024)  # its own output limit wins
    assert claude.price is not None and (claude.price.input, claude.price.output) == (Decimal("3"), Decimal("15"))
    assert claude.price.source == "policy"
    assert gpt.price is not None and gpt.price.input == Decimal("2.50")


def test_teams_list_alias_names() -> None:
    policy = compiles(COMPILED)
    assert policy.teams["ops"].models == {"chat", "gpt-4o"}
    assert policy.may_use("ops", "chat") and not policy.may_use("ops", "split")
    assert policy.may_use("app", "chat") and policy.may_use("app", "split")  # "*" includes aliases
    assert not policy.may_use("nobody", "chat")


# -- compile errors ------------------------------------------------------------------------------

ERR_HEAD = (
    PROVIDERS
    + """\
models:
  gpt-4o: {provider: openai, aliases: [gpt-4o-latest]}
teams:
  ops: {models: ["*"]}
routing:
  aliases:
"""
)  # lines 1-12; the snippets below start at line 13


def test_an_alias_may_not_take_a_models_name_or_alias() -> None:
    assert issues(
        ERR_HEAD
        + """\
    gpt-4o:
      targets: [{provider: openai, model: a}]
    gpt-4o-latest:
      targets: [{provider: openai, model: a}]
"""
    ) == [
        "p.yaml:13:5: routing.aliases.gpt-4o: alias 'gpt-4o' is already a model's name",
        "p.yaml:15:5: routing.aliases.gpt-4o-latest: alias 'gpt-4o-latest' is already an alias of model 'gpt-4o'",
    ]


def test_a_targets_provider_must_exist() -> None:
    assert issues(
        ERR_HEAD
        + """\
    chat:
      targets:
        - {provider: openai, model: a}
        - {provider: antrhopic, model: b}
        - {provider: nowhere, model: c}
"""
    ) == [
        "p.yaml:16:22: routing.aliases.chat.targets[1].provider: unknown provider 'antrhopic' "
        "(did you mean 'anthropic'?)",
        "p.yaml:17:22: routing.aliases.chat.targets[2].provider: unknown provider 'nowhere'",
    ]


def test_a_plan_names_each_provider_model_once() -> None:
    assert issues(
        ERR_HEAD
        + """\
    chat:
      targets:
        - {provider: openai, model: a}
        - {provider: anthropic, model: a}
        - {provider: openai, model: a}
      teams:
        ops:
          targets:
            - {provider: openai, model: a}
            - {provider: openai, model: a}
"""
    ) == [
        "p.yaml:17:11: routing.aliases.chat.targets[2]: the same provider and model as targets[0]",
        "p.yaml:22:15: routing.aliases.chat.teams.ops.targets[1]: the same provider and model as targets[0]",
    ]


def test_weights_belong_to_weighted_plans_only() -> None:
    assert issues(
        ERR_HEAD
        + """\
    split:
      strategy: weighted
      targets:
        - {provider: openai, model: a, weight: 3}
        - {provider: anthropic, model: b}
    chat:
      targets:
        - {provider: openai, model: a, weight: 3}
      teams:
        ops:
          strategy: weighted
          targets: [{provider: openai, model: a}]
"""
    ) == [
        "p.yaml:17:11: routing.aliases.split.targets[1]: strategy weighted needs a weight on every target",
        "p.yaml:20:40: routing.aliases.chat.targets[0].weight: only for strategy weighted",
        "p.yaml:24:21: routing.aliases.chat.teams.ops.targets[0]: strategy weighted needs a weight on every target",
    ]


def test_a_weighted_plan_needs_a_weight_above_zero() -> None:
    assert issues(
        ERR_HEAD
        + """\
    split:
      strategy: weighted
      targets:
        - {provider: openai, model: a, weight: 0}
        - {provider: anthropic, model: b, weight: 0}
"""
    ) == ["p.yaml:15:7: routing.aliases.split.targets: at least one target needs a weight above 0"]
    one = "    split:\n      strategy: weighted\n      targets: [{provider: openai, model: a, weight: 1}]\n"
    assert compiles(ERR_HEAD + one).aliases["split"].plan.weights == (1,)


def test_a_team_plan_must_name_a_known_team() -> None:
    assert issues(
        ERR_HEAD
        + """\
    chat:
      targets: [{provider: openai, model: a}]
      teams:
        ops: {targets: [{provider: openai, model: b}]}
        opss: {targets: [{provider: openai, model: b}]}
        billing: {targets: [{provider: openai, model: b}]}
"""
    ) == [
        "p.yaml:17:9: routing.aliases.chat.teams.opss: unknown team 'opss' (did you mean 'ops'?)",
        "p.yaml:18:9: routing.aliases.chat.teams.billing: unknown team 'billing'",
    ]


def test_a_team_plan_for_a_team_not_listing_the_alias_compiles_with_a_note() -> None:
    """A team's own plan under an alias its 'models' does not list is unused until the team lists
    it: harmless, so it compiles (it was refused, and `tollway serve` exited on it), with a note."""
    policy = compiles(
        ERR_HEAD.replace('ops: {models: ["*"]}', 'ops: {models: ["*"]}\n  support: {models: [gpt-4o]}')
        + """\
    chat:
      targets: [{provider: openai, model: a}]
      teams:
        ops: {targets: [{provider: openai, model: b}]}
        support: {targets: [{provider: anthropic, model: b}]}
"""
    )
    assert policy.notes == (
        "p.yaml:18:9: routing.aliases.chat.teams.support: note: team 'support' may not use 'chat' yet (its 'models' "
        "lists neither 'chat' nor \"*\"): this plan applies once teams.support.models lists 'chat'",
    )
    assert served_by(policy.aliases["chat"].teams["support"].targets) == [("anthropic", "b")]


def test_a_team_plan_does_not_inherit_the_aliases_strategy() -> None:
    """Weights in a weighted alias's team plan were refused as 'only for strategy weighted', though
    the alias is weighted: the message says the plan has its own strategy."""
    assert issues(
        ERR_HEAD
        + """\
    split:
      strategy: weighted
      targets:
        - {provider: openai, model: a, weight: 80}
        - {provider: anthropic, model: b, weight: 20}
      teams:
        ops:
          targets:
            - {provider: openai, model: a, weight: 50}
            - {provider: anthropic, model: b, weight: 50}
"""
    ) == [
        "p.yaml:21:44: routing.aliases.split.teams.ops.targets[0].weight: only for strategy weighted: a team's "
        "plan does not inherit the alias's strategy (this one is priority, the default); add 'strategy: weighted' "
        "to it",
        "p.yaml:22:47: routing.aliases.split.teams.ops.targets[1].weight: only for strategy weighted: a team's "
        "plan does not inherit the alias's strategy (this one is priority, the default); add 'strategy: weighted' "
        "to it",
    ]


def test_a_target_spelled_like_a_public_name_compiles_with_a_note() -> None:
    """A target whose model is also a public name its provider serves as another model was refused,
    though such a target is often meant: OpenAI's floating gpt-4o while a models entry pins a
    snapshot, an Azure deployment named like a model. It compiles and is sent as written; a note
    says it does not take that entry's price and window (nor, with two entries that differ, which
    one it inherits from)."""
    text = (
        PROVIDERS
        + """\
models:
  claude-haiku: {provider: anthropic, model: claude-3-5-haiku-20241022, context_window: 200000}
  haiku: {provider: anthropic, model: claude-3-5-haiku-20241022, context_window: 100000}
  gpt-4o: {provider: openai, model: gpt-4o-2024-08-06}
teams:
  ops: {models: [chat]}
routing:
  aliases:
    chat:
      targets:
        - {provider: anthropic, model: claude-haiku}
        - {provider: openai, model: gpt-4o}
        - {provider: anthropic, model: claude-3-5-haiku-20241022}
        - {provider: openai, model: gpt-4o-2024-08-06}
        - {provider: local, model: claude-haiku}
"""
    )
    policy = compiles(text)
    assert served_by(policy.aliases["chat"].plan.targets) == [
        ("anthropic", "claude-haiku"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku-20241022"),
        ("openai", "gpt-4o-2024-08-06"), ("local", "claude-haiku")]
    assert _without_windows(policy.notes) == (
        "p.yaml:17:40: routing.aliases.chat.targets[0].model: note: 'claude-haiku' is sent to provider 'anthropic' "
        "as it is; it is also the public name models.claude-haiku, which this provider serves as "
        "'claude-3-5-haiku-20241022': the target does not take that entry's price, context window or output limit "
        "(write 'claude-3-5-haiku-20241022' if it is that model you mean)",
        "p.yaml:18:37: routing.aliases.chat.targets[1].model: note: 'gpt-4o' is sent to provider 'openai' as it is; "
        "it is also the public name models.gpt-4o, which this provider serves as 'gpt-4o-2024-08-06': the target "
        "does not take that entry's price, context window or output limit (write 'gpt-4o-2024-08-06' if it is "
        "that model you mean)",
        # Two entries for the provider's one model, with different windows: which one it inherits is said.
        "p.yaml:19:11: routing.aliases.chat.targets[2]: note: models 'claude-haiku' and 'haiku' name model "
        "'claude-3-5-haiku-20241022' of provider 'anthropic', with different context_window: the target inherits "
        "the last one's (set context_window on the target to choose)",
    )  # (a public name that is also the provider's name, or another provider's model of the same name: no note)
    assert policy.aliases["chat"].plan.targets[2].context_window == 100000
    fixed = text.replace("        - {provider: anthropic, model: claude-haiku}\n", "").replace(
        "        - {provider: openai, model: gpt-4o}\n", "").replace(
        "model: claude-3-5-haiku-20241022}", "model: claude-3-5-haiku-20241022, context_window: 1000}")
    policy = compiles(fixed)
    first = policy.aliases["chat"].plan.targets[0]
    assert (first.upstream_model, first.context_window) == ("claude-3-5-haiku-20241022", 1000)
    assert _without_windows(policy.notes) == ()


def _without_windows(notes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(note for note in notes if "no context window is known" not in note)


def test_a_chain_mixing_targets_with_and_without_a_context_window_compiles_with_a_note() -> None:
    """A prompt too long for a target without a known window goes to it all the same, and its
    provider's 400 context_length_exceeded ends the request (a 400 does not fall back): said where a
    chain has windows for some targets (a chain with none is left alone)."""
    text = PROVIDERS + """\
models:
  gpt-4o: {provider: openai, model: gpt-4o-2024-08-06, context_window: 128000}
teams:
  ops: {models: [chat, plain]}
routing:
  aliases:
    chat:
      targets:
        - {provider: anthropic, model: claude-3-5-haiku-20241022}
        - {provider: openai, model: gpt-4o-2024-08-06}
    plain:
      targets:
        - {provider: anthropic, model: claude-3-5-haiku-20241022}
        - {provider: openai, model: gpt-4o-mini}
"""
    policy = compiles(text)
    assert policy.notes == (
        "p.yaml:15:11: routing.aliases.chat.targets[0]: note: no context window is known for "
        "'claude-3-5-haiku-20241022' of provider 'anthropic' (set context_window on the target or its models entry): "
        "a prompt too long for it is never sent elsewhere instead, and its provider's 400 context_length_exceeded "
        "ends the request (a 400 does not fall back)",
    )
    fixed = compiles(text.replace("model: claude-3-5-haiku-20241022}", "model: claude-3-5-haiku-20241022, "
                                                                     "context_window: 200000}", 1))
    assert fixed.notes == ()


def test_a_plan_needs_targets() -> None:
    assert issues(ERR_HEAD + "    chat:\n      targets: []\n") == [
        "p.yaml:14:7: routing.aliases.chat.targets: must not be empty (give at least one)"
    ]
    assert issues(ERR_HEAD + "    chat: {strategy: priority}\n") == [
        "p.yaml:13:5: routing.aliases.chat.targets: required field missing"
    ]


def test_a_target_takes_only_its_fields() -> None:
    assert issues(
        ERR_HEAD
        + """\
    chat:
      targets:
        - {provider: openai, model: a, wieght: 3}
        - {provider: openai, model: b, colour: red}
"""
    ) == [
        "p.yaml:15:40: routing.aliases.chat.targets[0]: unknown field 'wieght' (did you mean 'weight'?)",
        "p.yaml:16:40: routing.aliases.chat.targets[1]: unknown field 'colour' (expected one of: provider, model, "
        "priority, weight, context_window, max_output_tokens, price)",
    ]


def test_a_team_may_list_aliases_but_not_unknown_names() -> None:
    text = (
        PROVIDERS
        + """\
models:
  gpt-4o: {provider: openai}
routing:
  aliases:
    chat:
      targets: [{provider: openai, model: a}]
teams:
  ops: {models: [gpt-4o, chat, chta]}
"""
    )
    assert issues(text) == ["p.yaml:14:32: teams.ops.models[2]: unknown model 'chta' (did you mean 'chat'?)"]
    assert compiles(text.replace(", chta]", "]")).teams["ops"].models == {"gpt-4o", "chat"}


def test_a_schema_error_in_one_alias_hides_nothing_else() -> None:
    """Like a bad provider entry, a bad alias must not make the others unknown or hide their problems."""
    assert issues(
        ERR_HEAD.replace('ops: {models: ["*"]}', "ops: {models: [chat, empty]}")
        + """\
    empty:
      targets: []
    chat:
      targets: [{provider: opnai, model: a}]
"""
    ) == [
        "p.yaml:14:7: routing.aliases.empty.targets: must not be empty (give at least one)",
        "p.yaml:16:28: routing.aliases.chat.targets[0].provider: unknown provider 'opnai' (did you mean 'openai'?)",
    ]


# -- routing decisions ---------------------------------------------------------------------------

ROUTED = compiles(
    PROVIDERS
    + """\
models:
  gpt-4o-mini: {provider: openai}
  turbo: {provider: openai, model: gpt-3.5-turbo, context_window: 4000}
routing:
  aliases:
    chat:
      targets:
        - {provider: openai, model: gpt-4o-mini, context_window: 1000}
        - {provider: anthropic, model: claude-haiku, context_window: 8000}
        - {provider: local, model: llama}
      teams:
        vip:
          targets:
            - {provider: anthropic, model: claude-opus}
            - {provider: openai, model: gpt-4o}
    claude-only:
      targets:
        - {provider: anthropic, model: claude-haiku}
        - {provider: anthropic, model: claude-opus}
    sized:
      targets:
        - {provider: openai, model: small, context_window: 1000}
        - {provider: anthropic, model: big, context_window: 8000}
    split:
      strategy: weighted
      targets:
        - {provider: openai, model: a, weight: 0}
        - {provider: anthropic, model: b, weight: 30}
        - {provider: azure, model: c, weight: 0}
        - {provider: local, model: d, weight: 70}
    eighty:
      strategy: weighted
      targets:
        - {provider: openai, model: a, weight: 80}
        - {provider: anthropic, model: b, weight: 20}
teams:
  app: {models: [gpt-4o-mini, turbo, chat, claude-only, sized, split, eighty]}
  vip: {models: [chat]}
  other: {models: [gpt-4o-mini]}
"""
)
APP, VIP, OTHER = Principal("app"), Principal("vip"), Principal("other")


def route(model: str, api: apis.WireAPI = apis.CHAT_COMPLETIONS, tokens: int | None = None,
          principal: Principal = APP, draw: decide.Draw = random.random) -> list[tuple[str, str]]:
    return served_by(decide.route(ROUTED, principal, api, model, tokens, draw))


def refusal(model: str, api: apis.WireAPI = apis.CHAT_COMPLETIONS, tokens: int | None = None,
            principal: Principal = APP) -> ClientError:
    with pytest.raises(ClientError) as caught:
        decide.route(ROUTED, principal, api, model, tokens)
    return caught.value


def test_a_plain_model_routes_to_its_one_target() -> None:
    chain = decide.route(ROUTED, APP, apis.CHAT_COMPLETIONS, "gpt-4o-mini", 10)
    assert chain == (ROUTED.resolve("gpt-4o-mini"),)
    assert refusal("gpt-5").status == 404
    assert refusal("claude-only", principal=OTHER).code == "model_not_allowed"


def test_an_alias_routes_in_priority_order() -> None:
    expected = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku"), ("local", "llama")]
    assert route("chat") == expected
    assert route("chat", apis.MESSAGES) == expected  # the anthropic SDK reaches OpenAI targets too
    plan = ROUTED.aliases["chat"].plan
    assert decide.chain(plan, apis.CHAT_COMPLETIONS, None, "chat") == plan.targets


def test_a_team_without_the_alias_is_refused() -> None:
    error = refusal("chat", principal=OTHER)
    assert (error.status, error.code, error.param) == (403, "model_not_allowed", "model")
    assert error.message == "Team 'other' may not use model 'chat'."


def test_a_team_plan_serves_that_team() -> None:
    assert route("chat", principal=VIP) == [("anthropic", "claude-opus"), ("openai", "gpt-4o")]
    assert route("chat", principal=APP)[0] == ("openai", "gpt-4o-mini")


def test_targets_that_cannot_serve_the_clients_api_are_skipped() -> None:
    assert route("chat", apis.EMBEDDINGS) == [("openai", "gpt-4o-mini"), ("local", "llama")]
    assert route("chat", apis.COMPLETIONS) == [("openai", "gpt-4o-mini"), ("local", "llama")]
    assert route("chat", apis.EMBEDDINGS, principal=VIP) == [("openai", "gpt-4o")]
    error = refusal("claude-only", apis.EMBEDDINGS)
    assert (error.status, error.code, error.param) == (400, "api_mismatch", "model")
    assert error.message == ("Model 'claude-only' cannot serve openai.embeddings requests: its provider makes no "
                             "embeddings; use an embeddings model.")
    error = refusal("claude-only", apis.COMPLETIONS)
    assert error.message == ("Model 'claude-only' cannot serve openai.completions requests: use a chat API with it "
                             "(chat completions, Messages or Responses).")


def test_targets_with_too_small_a_context_window_are_skipped() -> None:
    everything = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku"), ("local", "llama")]
    assert route("chat", tokens=None) == everything  # not counted: nothing skipped
    assert route("chat", tokens=1000) == everything  # exactly the window fits
    assert route("chat", tokens=1001) == everything[1:]
    assert route("chat", tokens=8001) == [("local", "llama")]  # an unknown window is never skipped
    assert route("chat", tokens=10_000_000) == [("local", "llama")]
    assert route("chat", apis.EMBEDDINGS, tokens=5000) == [("local", "llama")]


def test_no_target_large_enough_is_a_400() -> None:
    assert route("sized", tokens=8000) == [("anthropic", "big")]
    error = refusal("sized", tokens=9000)
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")
    assert error.message == (
        "The prompt has about 9,000 tokens, more than any model behind 'sized' can take (the largest context "
        "window is 8,000 tokens)."
    )
    assert refusal("sized", apis.RESPONSES, tokens=9000).param == "input"  # the field the client's API has


def test_a_model_named_directly_too_small_for_the_prompt_is_a_400() -> None:
    """A model's context_window used to filter alias chains only: a model named directly got any prompt."""
    assert route("turbo", tokens=4000) == [("openai", "gpt-3.5-turbo")]
    assert route("turbo", tokens=None) == [("openai", "gpt-3.5-turbo")]  # not counted: never refused for size
    assert route("gpt-4o-mini", tokens=10_000_000) == [("openai", "gpt-4o-mini")]  # no known window
    error = refusal("turbo", apis.RESPONSES, tokens=4001)
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "input")
    assert error.message == ("The prompt has about 4,001 tokens, more than model 'turbo' can take (its context "
                             "window is 4,000 tokens).")
    # An estimate (a PDF's pages, a model without its own tokenizer) may be far off, and a model named
    # directly has no other target: the provider decides, as before the check.
    granted = decide.access(ROUTED, APP, "turbo")
    assert served_by(decide.plan(APP, apis.CHAT_COMPLETIONS, granted, "turbo", 4001, exact=False)) == [
        ("openai", "gpt-3.5-turbo")]


@pytest.mark.parametrize(
    ("draw", "first"),
    [(0.0, "b"), (0.1, "b"), (0.2999, "b"), (0.3, "d"), (0.5, "d"), (0.9999, "d")],
)
def test_a_weighted_plan_draws_the_first_target_by_weight(draw: float, first: str) -> None:
    # priority order: a (weight 0), b (30), c (0), d (70): b owns [0, 30), d owns [30, 100)
    order = [model for _, model in route("split", draw=lambda: draw)]
    assert order == [first, *(m for m in ("a", "b", "c", "d") if m != first)]


def test_weight_zero_targets_are_never_drawn_first() -> None:
    firsts = {route("split", draw=lambda i=i: i / 1000)[0][1] for i in range(1000)}
    assert firsts == {"b", "d"}
    # embeddings: b (anthropic) cannot serve, so d takes every first attempt; a and c stay fallbacks
    for draw in (0.0, 0.15, 0.5, 0.99):
        assert [m for _, m in route("split", apis.EMBEDDINGS, draw=lambda d=draw: d)] == ["d", "a", "c"]


def test_weighted_split_is_statistically_right() -> None:
    draw = random.Random(20240601).random
    firsts = [route("eighty", draw=draw)[0][0] for _ in range(10_000)]
    share = firsts.count("openai") / len(firsts)
    assert 0.78 <= share <= 0.82, share
    assert set(firsts) == {"openai", "anthropic"}


# -- the chains Envoy needs a cluster for ---------------------------------------------------------


def chain_clusters(aliases: str) -> set[str]:
    routing = "routing:\n  aliases:\n" + textwrap.indent(textwrap.dedent(aliases), "    ")
    policy = compiles(PROVIDERS + 'teams:\n  ops: {models: ["*"]}\n' + routing)
    return {decide.cluster_name(chain) for chain in decide.chains(policy)}


def test_chains_of_a_priority_alias_with_context_windows() -> None:
    assert chain_clusters("""\
        sized:
          targets:
            - {provider: openai, model: a, context_window: 1000}
            - {provider: azure, model: b, context_window: 8000}
            - {provider: anthropic, model: c, context_window: 200000}
        """) == {
        "openai+azure-eu+anthropic",  # a small prompt, chat
        "azure-eu+anthropic",  # over 1000 tokens (over 8000: anthropic alone needs no chain cluster)
        "openai+azure-eu",  # embeddings
    }


def test_chains_of_a_weighted_alias_start_with_each_target() -> None:
    assert chain_clusters("""\
        split:
          strategy: weighted
          targets:
            - {provider: openai, model: a, weight: 50}
            - {provider: anthropic, model: b, weight: 30}
            - {provider: local, model: c, weight: 20}
        """) == {
        "openai+anthropic+local",
        "anthropic+openai+local",
        "local+openai+anthropic",
        "openai+local",  # embeddings
        "local+openai",
        # A Responses request the local model's chat API cannot express (Responses built-in tools)
        "openai+anthropic",
        "anthropic+openai",
    }


def test_chains_of_team_plans() -> None:
    assert chain_clusters("""\
        chat:
          targets: [{provider: openai, model: a}, {provider: anthropic, model: b}]
          teams:
            ops:
              targets: [{provider: anthropic, model: b}, {provider: local, model: c}]
        """) == {"openai+anthropic", "anthropic+local"}


def test_a_single_servable_target_needs_no_chain_cluster() -> None:
    assert chain_clusters("one:\n  targets: [{provider: openai, model: a}]\n") == set()
    assert chain_clusters("""\
        claude:
          targets: [{provider: anthropic, model: b}, {provider: openai, model: a, context_window: 10}]
        """) == {"anthropic+openai"}  # embeddings: openai alone; over 10 tokens: anthropic alone


def test_cluster_name_joins_the_provider_clusters() -> None:
    plan = ROUTED.aliases["split"].plan
    assert decide.cluster_name(plan.targets) == "openai+anthropic+azure-eu+local"
    assert decide.cluster_name(plan.targets[2:3]) == "azure-eu"


def every_routed_cluster(policy: CompiledPolicy, alias: str, tokens: tuple[int | None, ...]) -> set[str]:
    """The clusters of every chain of two or more that route() gives for ``alias`` (any API, draw, size)."""
    found = set()
    principal = Principal(next(iter(policy.teams)))
    for api in (apis.CHAT_COMPLETIONS, apis.COMPLETIONS, apis.EMBEDDINGS, apis.MESSAGES):
        for count in tokens:
            for i in range(100):
                try:
                    chain = decide.route(policy, principal, api, alias, count, lambda i=i: i / 100)
                except ClientError:
                    continue
                if len(chain) > 1:
                    found.add(decide.cluster_name(chain))
    return found


def route_clusters(policy: CompiledPolicy, alias: str, tokens: int | None,
                   api: apis.WireAPI = apis.CHAT_COMPLETIONS, draw: float = 0.0) -> str:
    return decide.cluster_name(decide.route(policy, Principal("app"), api, alias, tokens, lambda: draw))


def test_chains_cover_prompts_larger_than_every_known_window() -> None:
    """A prompt over the only known window leaves the two unknown-window targets: a chain route() produces."""
    policy = compiles(PROVIDERS + """\
routing:
  aliases:
    long:
      targets:
        - {provider: openai, model: a, context_window: 1000}
        - {provider: anthropic, model: b}
        - {provider: local, model: c}
teams:
  app: {models: [long]}
""")
    assert route_clusters(policy, "long", 5000) == "anthropic+local"
    listed = {decide.cluster_name(chain) for chain in decide.chains(policy)}
    assert every_routed_cluster(policy, "long", (None, 10, 1000, 1001, 5000)) <= listed
    assert "anthropic+local" in listed


# Requests one translation or another cannot express, per client API (and ones every target can).
UNEXPRESSIBLE = {
    apis.CHAT_COMPLETIONS: [{"messages": [{"role": "user", "content": "Hi"}]},
                            {"messages": [{"role": "user", "content": "Hi"}], "n": 2}],
    apis.MESSAGES: [{"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
                    {"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],
                     "tools": [{"type": "web_search_20250305", "name": "web_search"}]}],
    apis.RESPONSES: [{"input": "Hi"}, {"input": "Hi", "tools": [{"type": "web_search"}]},
                     {"input": "Hi", "tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x"}]}],
}


def test_chains_cover_targets_left_out_for_what_their_api_cannot_express() -> None:
    """Every chain a request leaves after the targets unable to express it go (the router-level
    session's :func:`upstream.expresses`) has its Envoy cluster."""
    policy = compiles(PROVIDERS + """\
routing:
  aliases:
    mixed:
      strategy: weighted
      targets:
        - {provider: openai, model: a, weight: 40}
        - {provider: anthropic, model: b, weight: 30}
        - {provider: local, model: c, weight: 20}
        - {provider: azure, model: d, weight: 10}
teams:
  app: {models: [mixed]}
""")
    listed = {decide.cluster_name(chain) for chain in decide.chains(policy)}
    produced = set()
    for api, requests in UNEXPRESSIBLE.items():
        for request in requests:
            for i in range(100):
                left = decide.plan(Principal("app"), api, policy.aliases["mixed"], "mixed", None, lambda i=i: i / 100,
                                   functools.partial(upstream.expresses, api, {**request, "model": "mixed"}))
                if len(left) > 1:
                    produced.add(decide.cluster_name(left))
    assert produced <= listed, produced - listed
    assert {"openai+azure-eu", "local+openai+azure-eu", "azure-eu+openai+local"} <= produced  # some left out


def test_a_weighted_draw_is_among_the_targets_that_can_express_the_request() -> None:
    """Leaving out a target before the draw keeps the others' shares in proportion (drawn first and
    then left out, its share would all go to the next target in priority order)."""
    policy = compiles(PROVIDERS + """\
routing:
  aliases:
    split:
      strategy: weighted
      targets:
        - {provider: anthropic, model: claude, weight: 50}
        - {provider: openai, model: big, weight: 25}
        - {provider: openai, model: small, weight: 25}
teams:
  app: {models: [split]}
""")
    request = {"model": "split", "messages": [{"role": "user", "content": "Hi"}], "n": 2}
    expresses = functools.partial(upstream.expresses, apis.CHAT_COMPLETIONS, request)
    firsts = [decide.plan(Principal("app"), apis.CHAT_COMPLETIONS, policy.aliases["split"], "split", None,
                          lambda i=i: i / 100, expresses)[0].upstream_model for i in range(100)]
    assert (firsts.count("big"), firsts.count("small"), firsts.count("claude")) == (50, 50, 0)


def test_chains_cover_weighted_first_targets_after_filtering() -> None:
    """Embeddings leave openai, azure and local at 1/3 each: each may be drawn first, so each chain is needed."""
    policy = compiles(PROVIDERS + """\
routing:
  aliases:
    split:
      strategy: weighted
      targets:
        - {provider: anthropic, model: x, weight: 97}
        - {provider: openai, model: a, weight: 1}
        - {provider: azure, model: b, weight: 1}
        - {provider: local, model: c, weight: 1}
teams:
  app: {models: [split]}
""")
    assert route_clusters(policy, "split", None, apis.EMBEDDINGS, draw=0.1) == "openai+azure-eu+local"
    listed = {decide.cluster_name(chain) for chain in decide.chains(policy)}
    assert every_routed_cluster(policy, "split", (None,)) <= listed
    assert "openai+azure-eu+local" in listed


# -- which provider kinds serve which client APIs -------------------------------------------------

KINDS = ("openai", "anthropic", "azure-openai", "openai-compatible")
# client API -> (can_serve, needs_translation) for each kind of KINDS
TABLE = {
    apis.CHAT_COMPLETIONS: ((True, False), (True, True), (True, False), (True, False)),
    apis.COMPLETIONS: ((True, False), (False, True), (True, False), (True, False)),
    apis.EMBEDDINGS: ((True, False), (False, True), (True, False), (True, False)),
    apis.MESSAGES: ((True, True), (True, False), (True, True), (True, True)),
}


@pytest.mark.parametrize("api", list(TABLE), ids=lambda api: api.name)
def test_can_serve_and_needs_translation(api: apis.WireAPI) -> None:
    got = tuple((decide.can_serve(api, kind), decide.needs_translation(api, kind)) for kind in KINDS)
    assert got == TABLE[api]
