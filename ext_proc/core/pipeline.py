"""What runs on every request, in order: the one place to read it, top to bottom.

Request steps (:mod:`ext_proc.core.steps`) decide before anything goes upstream; response stages
(:mod:`ext_proc.core.response`) carry the answer back. A new capability (budgets, rate limits,
guardrails) is a step or a stage in its own module, registered here in its place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ext_proc.core import guard, limits, local, response, steps
from ext_proc.core.actions import Ask, Respond
from ext_proc.core.flow import Flow
from ext_proc.core.response import Stage
from ext_proc.core.steps import Step
from ext_proc.llm import apis


def request_steps(*, store_probe: bool = False) -> tuple[Step, ...]:
    """The request steps, in the order they run."""
    return (
        steps.Identify(),  # who is calling: a Tollway key, or the workload (first: every refusal is theirs)
        steps.Recognise(),  # the client's API from the path; its body decoded and checked
        steps.Access(),  # the model exists and the team may use it
        local.Local(),  # the endpoints Tollway answers itself: the model list, token counts
        steps.Route(),  # count the prompt; choose the target or the fallback chain
        *((steps.Probe(),) if store_probe else ()),  # shared state answers (ask and continue)
        limits.Limits(),  # budgets and rate limits: claimed before sending (ask and continue)
        guard.GuardPrompt(),  # the policy's guardrails on the prompt: redact, block, score injection
        steps.Rewrite(),  # the provider's body, path and key; Envoy's routing labels
    )


def response_stages(*, stream: bool, hide_usage: bool, translate: bool, guarded: bool = False) -> tuple[Stage, ...]:
    """The stages of one successful answer, in order (decoding and encoding are the response's own)."""
    stages: list[Stage] = [response.Read()]  # the meter: usage, served model, completion
    if hide_usage and not translate:
        stages.append(response.HideUsage())  # the usage event the client did not ask for
    if guarded:
        stages.append(guard.GuardAnswer())  # guardrails on the answer, in the served API, before translation
    if translate:
        stages.append(response.Translate())  # the served API's answer as the client's
    if stream:
        stages.append(response.Finish())  # a cut stream ends with an error event
    return tuple(stages)


# Stages are stateless: every combination is built once. An untranslated, unguarded buffered answer
# is read and passed through (response.READ_ONLY).
_STAGES = {
    (stream, hide, translate, guarded): response_stages(stream=stream, hide_usage=hide, translate=translate,
                                                        guarded=guarded)
    for stream in (False, True) for hide in (False, True) for translate in (False, True) for guarded in (False, True)
}
for _hide in (False, True):
    _STAGES[(False, _hide, False, False)] = response.READ_ONLY


def stages_for(flow: Flow, stream: bool) -> tuple[Stage, ...]:
    """The stages of this flow's answer; sets up what they need on the flow (reader, translator)."""
    served = flow.served or flow.api or apis.CHAT_COMPLETIONS  # (Envoy's own answer before any request)
    flow.meter.reader = served.reader()
    pair = flow.pair
    if pair is not None and stream:
        model = flow.target.upstream_model if flow.target else None
        estimate = flow.meter.estimate.tokens if flow.meter.estimate is not None else None
        flow.translator = pair.stream(model, not flow.hide_usage, flow.asked, flow.runtime, estimate)
    guarded = flow.guard is not None and flow.guard.plan.answers and flow.served is not None
    return _STAGES[(stream, flow.hide_usage, pair is not None, guarded)]


Hook = Callable[[Flow], "Ask | Respond | None"]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The request steps' hooks, by the message they run on (built once per service)."""

    steps: tuple[Step, ...]
    head: tuple[Hook, ...]
    body: tuple[Hook, ...]

    @classmethod
    def of(cls, chosen: tuple[Step, ...]) -> Pipeline:
        """Only the steps that override a hook run on its message."""
        return cls(
            steps=chosen,
            head=tuple(s.head for s in chosen if type(s).head is not Step.head),
            body=tuple(s.body for s in chosen if type(s).body is not Step.body),
        )


DEFAULT = Pipeline.of(request_steps())
