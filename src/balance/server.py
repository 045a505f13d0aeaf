"""`balance-service run`: the API on the built-in HTTP/1.1 server (or uvicorn), engines in process.

Start: listen at once (``/healthz`` answers, ``/readyz`` and the API say 503 while the shards
recover). Stop (SIGTERM, SIGINT): stop reading requests, answer those in flight, then stop the
engines (which write a last checkpoint).
"""

from __future__ import annotations

import asyncio
import signal

from balance.config import Settings


def run(settings: Settings) -> None:
    if settings.http_server == "uvicorn":
        _run_uvicorn(settings)
        return
    import uvloop

    uvloop.run(serve(settings))


def _run_uvicorn(settings: Settings) -> None:
    import uvicorn

    from balance.bootstrap import build_app

    uvicorn.run(
        build_app(settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        lifespan="on", access_log=False, log_level="warning", backlog=4096,
    )  # fmt: skip


async def serve(settings: Settings) -> None:
    from balance.api.admission import HttpLimits, raise_file_limit
    from balance.api.http1 import HttpServer
    from balance.bootstrap import build_app

    limits = HttpLimits.from_env()
    raise_file_limit()
    app = build_app(settings)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    refusals = app.metrics.http_refusals
    http = HttpServer(app.serve, admission=app.admission(limits), refusals=lambda reason: refusals.labels(reason).inc())
    await http.listen(settings.host, settings.port)
    starting = loop.create_task(app.start_service())  # recovery in the background
    try:
        await stopping.wait()
    finally:
        await http.stop()
        if not starting.done():
            starting.cancel()
        await app.service.stop()
