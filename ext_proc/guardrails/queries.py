"""The question a guard asks outside the process: an external prompt-injection classifier's score.

A request step returns ``Ask(Classify(...))`` (see :class:`~ext_proc.core.actions.Ask`); the
server runs it on its event loop with an HTTP client and a deadline, and feeds back the highest
score of the texts (a float in [0, 1]) or the exception it failed with. What a failure means
(block, or let the request through) is the policy's ``classifier.fail``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Classify:
    """Score ``texts`` (the prompt's user and tool text) at ``url`` within ``timeout`` seconds."""

    url: str
    texts: tuple[str, ...]
    timeout: float

    def __repr__(self) -> str:  # never the texts: they are prompts
        return f"Classify(url={self.url!r}, texts=<{len(self.texts)}>, timeout={self.timeout})"


class ClassifierUnavailable(Exception):
    """The classifier did not answer in time, failed, or answered something unreadable."""
