"""The policy's budgets and rate limits: schema, located errors, the compiled lookup."""

from __future__ import annotations

import textwrap

import pytest

from ext_proc.policy.compile import PolicyError, compile_policy
from ext_proc.policy.compiled import Budget, CompiledPolicy, RateLimit

HEAD = """\
apiVersion: tollway/v1
providers:
  openai: {kind: openai, credential: {env: OPENAI_API_KEY}}
models:
  gpt-4o: {provider: openai, aliases: [gpt-4o-latest]}
  gpt-4o-mini: {provider: openai}
teams:
  search: {keys: [{id: search-ci, sha256: "%s"}], models: ["*"]}
  support: {models: [gpt-4o-mini]}
routing:
  aliases:
    chat: {targets: [{provider: openai, model: gpt-4o-mini}]}
""" % ("a" * 64)  # lines 1-12


def compiles(text: str) -> CompiledPolicy:
    return compile_policy(HEAD + textwrap.dedent(text), "p.yaml")


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        compiles(text)
    return [str(issue) for issue in caught.value.errors]


def test_budgets_and_rate_limits_compile_to_exact_amounts() -> None:
    policy = compiles("""\
        budgets:
          search-monthly: {team: search, usd: "500.25", tokens: 2000000, period: month, timezone: Europe/Berlin,
                           alerts: [80, 50, 100], webhook: "https://hooks.example/tollway"}
          per-team-daily: {team: "*", usd: "10", period: day, enforce: soft}
        rate_limits:
          ci-key: {key: search-ci, requests_per_minute: 60, tokens_per_minute: 100000, concurrent: 4}
          chat: {model: chat, concurrent: 2}
        shared_state: {on_unavailable: open, default_output_tokens: 1024}
        """)
    limits = policy.limits
    assert limits.budgets[0] == Budget("search-monthly", "team", "search", 500_250_000, 2_000_000, "month",
                                       "Europe/Berlin", True, (50, 80, 100), "https://hooks.example/tollway")
    assert limits.budgets[1] == Budget("per-team-daily", "team", "*", 10_000_000, None, "day", "UTC", False)
    assert limits.rate_limits[0] == RateLimit("ci-key", "key", "search-ci@search", 60, 100_000, 4)
    assert (limits.on_unavailable, limits.default_output_tokens) == ("open", 1024)
    # The lookup: what counts a request of team search, key search-ci, for the alias chat.
    found = [(limit.name, member) for limit, member in limits.applying("search", "search-ci", "chat")]
    assert found == [("search-monthly", "search"), ("per-team-daily", "search"), ("ci-key", "search-ci@search"),
                     ("chat", "chat")]
    # Another team: only the "*" budget, counting that team on its own.
    assert [(limit.name, member) for limit, member in limits.applying("support", None, "gpt-4o-mini")] == [
        ("per-team-daily", "support")]


def test_no_limits_is_falsy_and_costs_nothing() -> None:
    policy = compiles("")
    assert not policy.limits and policy.limits.applying("search", None, "gpt-4o") == ()


@pytest.mark.parametrize(("snippet", "expected"), [
    ("budgets:\n  b: {team: serch, usd: \"1\", period: day}\n",
     "p.yaml:14:13: budgets.b.team: unknown team 'serch' (did you mean 'search'?)"),
    ("budgets:\n  b: {model: gpt4o, usd: \"1\", period: day}\n",
     "p.yaml:14:14: budgets.b.model: unknown model 'gpt4o' (did you mean 'gpt-4o'?)"),
    ("rate_limits:\n  r: {key: search-cj, concurrent: 1}\n",
     "p.yaml:14:12: rate_limits.r.key: unknown key id 'search-cj' (did you mean 'search-ci'?)"),
    ("budgets:\n  b: {team: search, usd: \"1\", period: day, timezone: Mars/Olympus}\n",
     "p.yaml:14:54: budgets.b.timezone: unknown time zone 'Mars/Olympus' (an IANA name, e.g. Europe/Berlin)"),
    # Names the host's zone files hold that are no zone of a place: localtime follows each host's
    # setting (replicas sharing Redis counted different days); they were accepted.
    ("budgets:\n  b: {team: search, usd: \"1\", period: day, timezone: localtime}\n",
     "p.yaml:14:54: budgets.b.timezone: 'localtime' is not an IANA time zone (it is the zone each host is set to: "
     "replicas would count different days): give one, e.g. Europe/Berlin or UTC"),
    ("budgets:\n  b: {team: search, usd: \"1\", period: day, timezone: posixrules}\n",
     "p.yaml:14:54: budgets.b.timezone: 'posixrules' is not an IANA time zone (it is the zone each host is set to: "
     "replicas would count different days): give one, e.g. Europe/Berlin or UTC"),
    ("budgets:\n  b: {team: search, usd: \"1\", period: day, timezone: right/UTC}\n",
     "p.yaml:14:54: budgets.b.timezone: 'right/UTC' is not an IANA time zone (a copy of the zone files for other "
     "systems' clocks: give the zone's own name): give one, e.g. Europe/Berlin or UTC"),
    ("budgets:\n  b: {team: search, usd: \"1\", period: day, timezone: Factory}\n",
     "p.yaml:14:54: budgets.b.timezone: 'Factory' is not an IANA time zone (a placeholder for a host with no zone "
     "set): give one, e.g. Europe/Berlin or UTC"),
    ("budgets:\n  b: {team: search, usd: 1.5, period: day}\n",
     "p.yaml:14:26: budgets.b.usd: must be a string (YAML reads 1.5 as a number; put it in quotes)"),
    ("budgets:\n  b: {team: search, period: day}\n",
     "p.yaml:14:3: budgets.b: needs 'usd', 'tokens' or both"),
    ("budgets:\n  b: {team: search, model: gpt-4o, usd: \"1\", period: day}\n",
     "p.yaml:14:3: budgets.b: needs exactly one of 'team', 'key' or 'model' (or 'team' with 'key': that team's "
     "key)"),
    ("rate_limits:\n  r: {team: search, key: \"*\", concurrent: 1}\n",
     "p.yaml:14:3: rate_limits.r: 'team' with 'key' names one key of one team: neither can be \"*\" (key: \"*\" "
     "alone gives each key its own counter)"),
    ("rate_limits:\n  r: {team: support, key: search-ci, concurrent: 1}\n",
     "p.yaml:14:27: rate_limits.r.key: unknown key id 'search-ci' in team 'support'"),
    ("budgets:\n  b: {team: search, usd: \"1\", period: week}\n",
     "p.yaml:14:39: budgets.b.period: must be one of day, month (not 'week')"),
    ("rate_limits:\n  r: {team: search}\n",
     "p.yaml:14:3: rate_limits.r: needs 'requests_per_minute', 'tokens_per_minute' or 'concurrent'"),
    ("rate_limits:\n  r: {team: search, requests_per_minute: 0}\n",
     "p.yaml:14:42: rate_limits.r.requests_per_minute: must be at least 1"),
    ("shared_state: {on_unavailable: maybe}\n",
     "p.yaml:13:32: shared_state.on_unavailable: must be one of closed, open (not 'maybe')"),
])
def test_every_mistake_is_located(snippet: str, expected: str) -> None:
    assert issues(snippet) == [expected]


def test_a_usd_amount_is_whole_micro_dollars() -> None:
    """"0.0000009" compiled to a $0 hard budget (every request refused), "1.0000004" to $1: budgets
    count whole micro-dollars, so a finer amount is refused with the one to write."""
    assert issues("""\
        budgets:
          tiny: {team: search, usd: "0.0000009", period: day}
          under: {team: search, usd: "0.0000004", period: day}
          cut: {team: search, usd: "2.5000007", period: day}
          zero: {team: search, usd: "0.000", period: day}
        """) == [
        "p.yaml:14:29: budgets.tiny.usd: '0.0000009' has more than 6 decimals: budgets count whole micro-dollars "
        '($0.000001), and this amount would be cut to $0; write "0.000001"',
        "p.yaml:15:30: budgets.under.usd: '0.0000004' has more than 6 decimals: budgets count whole micro-dollars "
        '($0.000001), and this amount would be cut to $0; write "0.000001" or more',
        "p.yaml:16:28: budgets.cut.usd: '2.5000007' has more than 6 decimals: budgets count whole micro-dollars "
        '($0.000001), and this amount would be cut to $2.5; write "2.500001"',
    ]  # ("0.000" is no mistake: see below)
    policy = compiles('budgets:\n  b: {team: search, usd: "0.000001", period: day}\n'
                      '  c: {team: search, usd: "7.250000000", period: day}\n')
    assert [b.usd_micros for b in policy.limits.budgets] == [1, 7_250_000]


def test_a_zero_usd_budget_compiles_with_a_note() -> None:
    """usd "0" was refused, and `tollway serve` exited 2 on such a policy (a sidecar's crash loop):
    a hard $0 budget freezes a team, a soft one alerts on any spend, both deliberate. It compiles,
    and `policy check` prints a note."""
    policy = compiles("""\
        budgets:
          freeze: {team: search, usd: "0", period: month}
          watch: {team: search, usd: "0.000", period: day, enforce: soft}
        """)
    assert [b.usd_micros for b in policy.limits.budgets] == [0, 0]
    note = "note: $0: a hard budget refuses every request in its scope, a soft one alerts on the first one that spends"
    assert policy.notes == (f"p.yaml:14:31: budgets.freeze.usd: {note}", f"p.yaml:15:30: budgets.watch.usd: {note}")


def test_a_limits_name_holds_no_slash_as_its_counters_would_be_read_as_anothers() -> None:
    # budget/a/usd/usd/m/2026-12: budget 'a' of member 'usd/m', or budget 'a/usd' of member 'm'; and
    # 'search/tokens' read as budget 'search' (its alerts went to the other budget's webhook).
    found = issues("""\
        budgets:
          a: {model: "*", usd: "1", period: month}
          a/usd: {model: "*", usd: "1", period: month}
          search/tokens: {team: search, tokens: 100, period: day}
        rate_limits:
          r/requests: {team: search, concurrent: 1}
        """)
    why = "must be 1-128 letters, digits or '.-_:', starting with a letter or digit (no '/': it separates the " \
          "parts of the limit's counter names)"
    assert found == [f"p.yaml:15:3: budgets: budget name 'a/usd': {why}",
                     f"p.yaml:16:3: budgets: budget name 'search/tokens': {why}",
                     f"p.yaml:18:3: rate_limits: rate limit name 'r/requests': {why}"]


def test_one_broken_budget_does_not_hide_another() -> None:
    found = issues("""\
        budgets:
          a: {team: search, usd: 1, period: day}
          b: {team: nobody, usd: "1", period: day}
        """)
    assert [issue.split(": ")[1] for issue in found] == ["budgets.a.usd", "budgets.b.team"]


SHARED_ID = HEAD.replace('  support: {models: [gpt-4o-mini]}',
                         '  support: {keys: [{id: search-ci, sha256: "%s"}], models: [gpt-4o-mini]}' % ("b" * 64))


def test_a_key_counts_with_its_team_as_key_ids_are_unique_only_within_a_team() -> None:
    policy = compile_policy(SHARED_ID + textwrap.dedent("""\
        rate_limits:
          each-key: {key: "*", requests_per_minute: 3}
          search-ci: {team: search, key: search-ci, concurrent: 1}
        """), "p.yaml")
    limits = policy.limits
    assert limits.rate_limits[1] == RateLimit("search-ci", "key", "search-ci@search", concurrent=1)
    # Two teams' keys of one id: each its own counter under "*"; the named one counts only search's.
    assert [(limit.name, member) for limit, member in limits.applying("search", "search-ci", None)] == [
        ("search-ci", "search-ci@search"), ("each-key", "search-ci@search")]
    assert [(limit.name, member) for limit, member in limits.applying("support", "search-ci", None)] == [
        ("each-key", "search-ci@support")]


def test_a_key_id_two_teams_use_needs_its_team() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy(SHARED_ID + "budgets:\n  b: {key: search-ci, usd: \"1\", period: day}\n", "p.yaml")
    assert [str(issue) for issue in caught.value.errors] == [
        "p.yaml:14:12: budgets.b.key: key id 'search-ci' is ambiguous: teams 'search' and 'support' each have a "
        "key with it; name the team too (team: search)"]


def test_a_limit_on_any_name_of_a_model_counts_the_model_in_the_counter_it_was_written_with() -> None:
    policy = compiles("""\
        budgets:
          latest: {model: gpt-4o-latest, tokens: 100, period: day}
        rate_limits:
          each-model: {model: "*", requests_per_minute: 5}
          chat: {model: chat, concurrent: 2}
        """)
    limits = policy.limits
    # The counter keeps the alias's name (a policy that upgrades keeps its spend); the model is found by its
    # public name.
    assert (limits.budgets[0].member, limits.budgets[0].public) == ("gpt-4o-latest", "gpt-4o")
    # The step asks with the public name, whichever name the request used: one claim per limit.
    assert [(limit.name, member) for limit, member in limits.applying("search", None, "gpt-4o")] == [
        ("latest", "gpt-4o-latest"), ("each-model", "gpt-4o")]
    # A routing alias is a model name of its own: its limits, its own counter under "*".
    assert [(limit.name, member) for limit, member in limits.applying("search", None, "chat")] == [
        ("chat", "chat"), ("each-model", "chat")]
