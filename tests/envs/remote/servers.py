"""Real HTTP servers on loopback for the remote-environment tests: any ASGI app run by uvicorn on a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


class Running:
    """A uvicorn server on a free loopback port, on a daemon thread; ``stop()`` ends it (connections dropped)."""

    def __init__(self, app: Any, *, graceful_s: float = 0.2) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=graceful_s)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@contextmanager
def running(app: Any, **kw: Any) -> Iterator[Running]:
    server = Running(app, **kw)
    try:
        yield server
    finally:
        server.stop()
