"""The fake OpenAI/Anthropic provider (``tollway mock-provider``) used by tests, ``make run`` and benches.

- ``responses``  pure builders: token counts, response bodies, SSE events, error bodies.
- ``cassettes``  loading recorded go-vcr exchanges and matching requests against them.
- ``http``       the asyncio/httptools HTTP/1.1 plumbing: parsing, keep-alive, pipelining, writing replies.
- ``provider``   what the fake provider answers (routes, knobs, keys, replay) and the ``mock-provider`` CLI.
"""
