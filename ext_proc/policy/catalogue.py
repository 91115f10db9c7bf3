"""The model catalogue: what a team sees in ``GET /v1/models``, which is what it may call.

A team sees every name it may put in ``model`` and nothing else: each public model it may use
(with that model's own aliases, which reach the same target), and each routing alias it may use.
A model is listed as owned by its provider; a routing alias as owned by ``tollway`` (Tollway
picks the provider per request). The list is sorted by name.
"""

from __future__ import annotations

from ext_proc.llm.apis import Listed
from ext_proc.policy.compiled import CompiledPolicy


def visible(policy: CompiledPolicy, team: str) -> tuple[Listed, ...]:
    """The models ``team`` may call, sorted by name."""
    out = [
        Listed(name, target.provider.name, target.context_window, target.max_output_tokens)
        for name, target in policy.models.items()
        if policy.may_use(team, target.public)
    ]
    out += [Listed(name, "tollway") for name in policy.aliases if policy.may_use(team, name)]
    return tuple(sorted(out, key=lambda listed: listed.id))


def find(policy: CompiledPolicy, team: str, name: str) -> Listed | None:
    """The model ``name`` as ``team`` sees it (None: it does not exist, or the team may not use it)."""
    for listed in visible(policy, team):
        if listed.id == name:
            return listed
    return None
