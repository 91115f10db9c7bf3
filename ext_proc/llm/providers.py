"""Provider kinds: which wire APIs each speaks, how it takes its key, where requests go.

A provider in the policy has a *kind*. The kind decides everything Tollway must do differently
for it, and nothing else does: the wire APIs it speaks (and so which client APIs it can serve,
directly or through a translation pair of :mod:`ext_proc.llm.translate`), the headers that carry
its API key, the request path (Azure OpenAI puts the deployment and an ``api-version`` in it) and
the Host it expects. Adding a kind is one :class:`ProviderKind` in :data:`KINDS`.

Which API serves a client (:meth:`ProviderKind.serves`): the client's own when the kind speaks
it, else the first API of the kind's ``speaks`` (in its order) that a translation pair reaches
from the client's. So a Responses client is served natively by ``openai`` and ``azure-openai``,
through chat completions by ``openai-compatible`` servers (most of which only speak chat), and
through Messages by ``anthropic``; legacy completions and embeddings by OpenAI-style kinds only.
"""

from __future__ import annotations

from typing import Protocol

from ext_proc.llm import translate
from ext_proc.llm.apis import CHAT_COMPLETIONS, COMPLETIONS, COUNT_TOKENS, EMBEDDINGS, MESSAGES, RESPONSES, WireAPI

Headers = tuple[tuple[str, str], ...]
_UNKNOWN = object()


class Settings(Protocol):
    """What a kind reads of one configured provider (the policy's ``Provider``)."""

    @property
    def anthropic_version(self) -> str: ...

    @property
    def api_version(self) -> str | None: ...


class ProviderKind:
    """One kind of provider; see the module docstring."""

    __slots__ = ("_serves", "chat_output_limit", "host", "key_header", "name", "speaks")

    def __init__(self, name: str, speaks: tuple[WireAPI, ...], key_header: str, host: str | None = None,
                 chat_output_limit: str = "max_tokens") -> None:
        self.name = name
        self.speaks = speaks  # in order of preference for the clients it must translate for
        self.key_header = key_header  # the header that carries its key
        self.host = host  # the Host it expects when the policy gives no endpoint (None: unknown)
        # The chat field a translated request's output limit goes in: OpenAI's reasoning models
        # refuse ``max_tokens`` ("Use 'max_completion_tokens' instead"), which every OpenAI model
        # takes; many OpenAI-compatible servers know only ``max_tokens``.
        self.chat_output_limit = chat_output_limit
        self._serves: dict[WireAPI, WireAPI | None] = {}

    def __repr__(self) -> str:
        return f"<ProviderKind {self.name}>"

    def serves(self, client: WireAPI) -> WireAPI | None:
        """The API this kind answers a ``client`` request in: the client's own when it speaks it,
        else one a translation pair reaches; None when it cannot serve that client at all."""
        found = self._serves.get(client, _UNKNOWN)
        if found is not _UNKNOWN:
            return found  # type: ignore[return-value]
        if client not in self._serves:
            found = client if client in self.speaks else None
            for api in self.speaks if found is None else ():
                if translate.pair(client, api) is not None:
                    found = api
                    break
            self._serves[client] = found
        return self._serves[client]

    def key_headers(self, key: str, settings: Settings) -> Headers:
        """The headers that carry ``key`` to a provider of this kind."""
        return ((self.key_header, f"Bearer {key}" if self.key_header == "authorization" else key),)

    def path(self, api: WireAPI, model: str, settings: Settings) -> str:
        """The request path for ``api`` with the provider's ``model``."""
        return api.path

    def model_in_body(self, api: WireAPI) -> bool:
        """Whether the provider reads its model name from the body (else from :meth:`path`)."""
        return True


class AnthropicKind(ProviderKind):
    __slots__ = ()

    def key_headers(self, key: str, settings: Settings) -> Headers:
        return (("x-api-key", key), ("anthropic-version", settings.anthropic_version))


class AzureKind(ProviderKind):
    """Azure OpenAI: the deployment (the policy's model name) and ``api-version`` are in the path,
    except for the Responses API, which Azure serves only on its version-less v1 surface
    (``/openai/v1/responses``) with the deployment as the body's ``model``."""

    __slots__ = ()

    def path(self, api: WireAPI, model: str, settings: Settings) -> str:
        if api is RESPONSES:
            return "/openai/v1/responses"
        operation = api.path.removeprefix("/v1/")
        return f"/openai/deployments/{model}/{operation}?api-version={settings.api_version}"

    def model_in_body(self, api: WireAPI) -> bool:
        return api is RESPONSES


_OPENAI_APIS = (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, RESPONSES)

KINDS: dict[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind("openai", _OPENAI_APIS, "authorization", host="api.openai.com",
                     chat_output_limit="max_completion_tokens"),
        AnthropicKind("anthropic", (MESSAGES, COUNT_TOKENS), "x-api-key", host="api.anthropic.com"),
        AzureKind("azure-openai", _OPENAI_APIS, "api-key", chat_output_limit="max_completion_tokens"),
        # Most OpenAI-compatible servers (vLLM, Ollama, LiteLLM...) speak chat completions only:
        # Responses clients are served through chat, which every one of them speaks.
        ProviderKind("openai-compatible", (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS), "authorization"),
    )
}

# Every header some kind puts a key (or key-bound version) in: a try removes those it does not set.
KEY_HEADERS = ("authorization", "x-api-key", "api-key", "anthropic-version")


def kind(name: str) -> ProviderKind:
    """The kind named ``name`` (the policy validates names against :data:`KINDS`)."""
    return KINDS[name]
