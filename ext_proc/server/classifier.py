"""The external prompt-injection classifier's client: one HTTP call per question, with a deadline.

:meth:`Classifier.answer` takes a :class:`~ext_proc.guardrails.queries.Classify` and returns an
awaitable the servicer runs on the event loop (ask and continue: the request waits, nothing
blocks). The classifier is an HTTP endpoint the platform team runs: Tollway POSTs
``{"texts": [...]}`` and reads ``{"scores": [...]}`` (one per text) or ``{"score": x}``, and
answers the highest score. No answer within the policy's ``timeout_ms``, a status other than
200, or a body without scores is :class:`~ext_proc.guardrails.queries.ClassifierUnavailable`
(the policy's ``fail`` decides what that means). One connection pool per worker process; the
texts are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

from ext_proc.guardrails.queries import ClassifierUnavailable, Classify

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("tollway.classifier")


class Classifier:
    """Asks external classifiers (any URL the policy names), over one pooled async HTTP client."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def answer(self, query: Classify) -> Any:
        return self._ask(query)

    async def _ask(self, query: Classify) -> float:
        import httpx  # on first use: about 18 MB of imports a policy without a classifier never needs

        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport, trust_env=False)
        try:
            reply = await asyncio.wait_for(
                self._client.post(query.url, json={"texts": list(query.texts)}, timeout=query.timeout), query.timeout)
        except (TimeoutError, httpx.TimeoutException):
            raise ClassifierUnavailable(f"no answer within {query.timeout * 1000:g} ms") from None
        except httpx.HTTPError as exc:
            raise ClassifierUnavailable(f"{type(exc).__name__}") from None
        if reply.status_code != 200:
            raise ClassifierUnavailable(f"status {reply.status_code}")
        try:
            body = reply.json()
        except ValueError:
            raise ClassifierUnavailable("an answer that is not JSON") from None
        scores = body.get("scores") if isinstance(body, dict) else None
        if scores is None and isinstance(body, dict):
            scores = [body.get("score")]
        if not isinstance(scores, list) or not scores or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
            raise ClassifierUnavailable("an answer without scores")  # (NaN or infinity is none: no score)
        return float(max(scores))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
