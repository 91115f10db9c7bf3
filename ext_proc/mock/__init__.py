"""The fake OpenAI/Anthropic provider (``tollway mock-provider``) used by tests, ``make run`` and benches.

- ``responses``  pure builders: token counts, response bodies, SSE events, error bodies.
- ``cassettes``  loading recorded go-vcr exchanges and matching requests against them.
- ``provider``   the asyncio/httptools HTTP/1.1 server and the ``mock-provider`` CLI entry point.
"""
