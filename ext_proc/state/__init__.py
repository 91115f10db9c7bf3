"""Shared state behind one small interface: in-process by default, Redis for many sidecars."""
