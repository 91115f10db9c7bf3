"""The Prometheus collectors of a worker's ``/metrics``: the summed tallies, the budgets, the policy.

Apart from :mod:`ext_proc.server.metrics` (the tallies themselves, which the supervisor keeps too)
so that only the workers import ``prometheus_client`` (about 9 MB of a process's memory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ext_proc.server.metrics import METRICS, Merged

if TYPE_CHECKING:
    from ext_proc.server.reload import PolicyHolder


class TallyCollector(Collector):
    """The summed tallies as Prometheus metric families (read at scrape time)."""

    def __init__(self, source: Callable[[], Merged]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        merged = self.source()
        families: dict[str, Any] = {}
        for metric in METRICS.values():
            if metric.kind == "counter":
                families[metric.name] = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
            elif metric.kind == "gauge":
                families[metric.name] = GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)
            else:
                families[metric.name] = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
        for key, value in sorted(merged.counters.items()):
            family = families.get(key[0])
            if family is not None:
                family.add_metric(list(key[1:]), value / 1e6 if key[0] == "tollway_cost_usd" else value)
        for key, value in sorted(merged.gauges.items()):
            family = families.get(key[0])
            if family is not None:
                family.add_metric(list(key[1:]), value)
        for key, values in sorted(merged.histograms.items()):
            family = families.get(key[0])
            if family is None:
                continue
            bounds = METRICS[key[0]].buckets
            cumulative, buckets = 0.0, []
            for bound, count in zip((*bounds, float("inf")), values[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else _le(bound), cumulative))
            family.add_metric(list(key[1:]), buckets, values[-1])
        yield from families.values()


def _le(bound: float) -> str:
    return repr(float(bound))



class BudgetCollector(Collector):
    """Each budget's spend, what is left and its limit in the current window, from the store's
    counters (the rows of ``/v1/budgets``, read at scrape time). Members of a per-key budget are
    summed (no per-key label); a team or model budget has one series per member."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def update(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Any]:
        totals: dict[tuple[str, str, str], list[float]] = {}
        for row in self.rows:
            member = "*" if row["scope"] == "key" else row["member"]
            found = totals.setdefault((row["unit"], row["budget"], member), [0.0, 0.0, 0.0])
            scale = 1e6 if row["unit"] == "usd" else 1
            found[0] += row["spent"] / scale
            found[1] += row["remaining"] / scale
            found[2] += row["limit"] / scale
        for unit in ("usd", "tokens"):
            families = [GaugeMetricFamily(f"tollway_budget_{what}_{unit}", f"{text} ({unit}, current window)",
                                          labels=("budget", "member"))
                        for what, text in (("spent", "What a budget's member spent"),
                                           ("remaining", "What is left of a budget (open reservations held back)"),
                                           ("limit", "A budget's limit"))]
            for (found_unit, budget, member), values in sorted(totals.items()):
                if found_unit == unit:
                    for family, value in zip(families, values, strict=True):
                        family.add_metric([budget, member], value)
            yield from families


class PolicyMetrics(Collector):
    """The controller's counts, as every worker's ``/metrics`` shows them."""

    def __init__(self, holder: PolicyHolder) -> None:
        self.holder = holder

    def collect(self) -> Iterator[Any]:
        self.holder.current  # noqa: B018
        state = self.holder.state
        reloads = CounterMetricFamily("tollway_policy_reloads", "Policy loads by result", labels=["result"])
        reloads.add_metric(["ok"], state.reloads_ok)
        reloads.add_metric(["error"], state.reloads_error)
        yield reloads
        info = GaugeMetricFamily("tollway_policy_info", "The loaded policy (value 1)", labels=["version"])
        if state.version:
            info.add_metric([state.version], 1)
        yield info
        yield GaugeMetricFamily("tollway_policy_last_reload_ok", "1 when the last policy load succeeded",
                                value=0 if state.last_error else 1)
        yield GaugeMetricFamily(
            "tollway_policy_stale", "1 when the policy file was rejected and an older version still serves",
            value=1 if state.last_error and state.version else 0)
