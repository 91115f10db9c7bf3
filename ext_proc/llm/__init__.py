"""LLM wire formats: the client APIs Tollway understands, their usage fields, and SSE. Pure."""
