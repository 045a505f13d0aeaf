"""The HTTP API (raw ASGI + msgspec: the leanest stack measured, see BENCHMARKS.md)."""
