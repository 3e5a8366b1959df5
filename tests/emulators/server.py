"""Serve an ASGI emulator with uvicorn on a free port in a background thread (its own event loop)."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from infra.devstack import free_port


class ServerThread:
    """`with ServerThread(app) as base_url:` — plain HTTP on 127.0.0.1, as Mirth with server.api.allowhttp=true."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"emulator:{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start on port {self.port}")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
