"""Reading an ASGI request body with a size limit (shared by the app and the front processes)."""

from __future__ import annotations

from typing import Any

BODY_BYTES_MAX = 16 * 1024 * 1024


async def read_body(receive: Any) -> bytes | None:
    """The whole body, or None when it is larger than BODY_BYTES_MAX (the rest is drained)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= BODY_BYTES_MAX:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks) if size <= BODY_BYTES_MAX else None
