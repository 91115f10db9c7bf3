"""Translation between the OpenAI Chat Completions and the Anthropic Messages APIs.

A client speaks one API (its SDK); the policy may route it to a provider that speaks the other.
These modules are pure functions and small state machines over decoded JSON, with no I/O:

* :mod:`.openai_to_anthropic` serves an OpenAI chat client from Anthropic: the request goes out as
  a Messages request, the Message (or its event stream, or its error) comes back as OpenAI's.
* :mod:`.anthropic_to_openai` serves an Anthropic client from an OpenAI-compatible model.
* :mod:`.common` holds what both directions share: finish/stop reasons, usage, error types, SSE
  framing.

Fields that have no counterpart are dropped (and listed in each module's docstring); requests that
cannot be expressed at all (for example ``n > 1`` against Anthropic) raise
:class:`TranslationError`, which the caller answers as a 400 in the client's error format.
"""
