"""Serve the application from a background thread on a loopback port.

Used by ``magic-attr demo`` and the integration tests: the listening socket is
bound before the thread starts, so the port is known and never raced for.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


class BackgroundServer:
    """Runs uvicorn with ``app`` on ``127.0.0.1`` and a free port until ``stop``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this. Without it every response on a kept-alive
        # connection waited about 40 ms for the client's delayed ACK (Nagle's algorithm).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]},
                                        name="magic-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> str:
        """Start serving and wait until the lifespan finished; return the base URL."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the service failed to start; see the log above")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the service did not start within {timeout:g} s")
            time.sleep(0.05)
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        """Ask uvicorn to exit, which runs the lifespan shutdown, and wait for it."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
        self._socket.close()
