"""``tollway budgets`` (and ``/v1/budgets``, the dashboard, the budget gauges): the rows of the budgets'
counters in the current window."""

from __future__ import annotations

import datetime

from ext_proc.ledger.budgets import rows
from ext_proc.policy.compile import compile_policy
from ext_proc.policy.compiled import budget_counter, budget_parts

NOW = datetime.datetime(2026, 12, 4, 12, tzinfo=datetime.UTC).timestamp()
SEARCH, ADS = "a" * 64, "b" * 64
HEAD = f"""
apiVersion: tollway/v1
providers: {{openai: {{kind: openai}}}}
models: {{gpt-4o: {{provider: openai, aliases: [gpt-4o-latest]}}}}
teams:
  ml/search: {{keys: [{{id: ci, sha256: "{SEARCH}"}}], models: ["*"]}}
  ads: {{keys: [{{id: ci, sha256: "{ADS}"}}], models: ["*"]}}
"""


def shown(budgets: str, counters: dict[str, tuple[int, int]]) -> list[tuple[str, str, str, int]]:
    policy = compile_policy(HEAD + budgets)
    return [(row["budget"], row["member"], row["unit"], row["spent"]) for row in rows(policy, counters, NOW)]


def test_a_counter_is_read_back_as_its_budget_unit_member_and_window() -> None:
    counter = budget_counter("search-tokens", "tokens", "ci@ml/search", "2026-12-04")
    assert counter == "budget/search-tokens/tokens/ci@ml/search/2026-12-04"
    assert budget_parts(counter) == ("search-tokens", "tokens", "ci@ml/search", "2026-12-04")
    assert budget_parts("rate/r/concurrent/ads") is None
    assert budget_parts("budget/b/usd") is None


def test_each_budget_lists_its_own_counters_only() -> None:
    budgets = """
budgets:
  search: {team: "*", tokens: 1000, period: day}
  search-tokens: {team: "*", tokens: 100, period: day}
"""
    assert shown(budgets, {"budget/search-tokens/tokens/ml/search/2026-12-04": (95, 0),
                           "budget/search/tokens/ads/2026-12-04": (7, 0),
                           "budget/search/tokens/ads/2026-12-03": (500, 0)}) == [  # yesterday: gone
        ("search", "ads", "tokens", 7), ("search-tokens", "ml/search", "tokens", 95)]
