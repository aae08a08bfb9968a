"""Run `pocketomni serve`'s app in this process (uvicorn in a background thread, on a free loopback
port) so tests can drive it with the official openai client and look at the server's own records."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from pocketomni.serve import ServeConfig, create_app
from pocketomni.serve.turn import Server


@dataclass
class Running:
    base_url: str
    port: int
    server: Server  # the app's shared state: records of past requests, the prefix cache, limits


@contextmanager
def running_server(omni, config: ServeConfig | None = None) -> Iterator[Running]:
    app = create_app(omni, config or ServeConfig())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield Running(f"http://127.0.0.1:{port}/v1", port, app.state.server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_for_record(server: Server, request_id_prefix: str | None = None, timeout: float = 30.0):
    """The record of the latest request once it has finished (its chat given back or closed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.admission.active == 0 and server.records:
            return server.records[-1]
        time.sleep(0.01)
    raise AssertionError("the server did not finish the request")
