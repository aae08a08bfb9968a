"""Network guard for every MNN tool process the benchmark starts (on its PYTHONPATH as sitecustomize).

Python-level sockets cannot reach anything but a local Unix socket: connect, connect_ex, sendto and
name resolution raise OSError before a packet is built. The driver also keeps the venv's pip off PATH
(a `pip` in the guard's bin/ that refuses) and runs the venv's interpreter by its full path.
"""

from __future__ import annotations

import socket

_REFUSAL = "network access is blocked in the MNN benchmark process (benchmarks/mnn_peer/guard)"


class NetworkBlocked(OSError):
    pass


def _refuse(*args: object, **kwargs: object) -> None:
    raise NetworkBlocked(_REFUSAL)


def _local_only(real):
    def call(self: socket.socket, address: object, *args: object) -> object:
        if self.family == getattr(socket, "AF_UNIX", None):
            return real(self, address, *args)
        raise NetworkBlocked(_REFUSAL)
    return call


socket.socket.connect = _local_only(socket.socket.connect)  # type: ignore[method-assign]
socket.socket.connect_ex = _local_only(socket.socket.connect_ex)  # type: ignore[method-assign]
socket.socket.sendto = _refuse  # type: ignore[method-assign]
socket.socket.sendmsg = _refuse  # type: ignore[method-assign]
socket.getaddrinfo = _refuse  # type: ignore[assignment]
socket.gethostbyname = _refuse  # type: ignore[assignment]
socket.gethostbyname_ex = _refuse  # type: ignore[assignment]
socket.create_connection = _refuse  # type: ignore[assignment]
POCKETOMNI_NET_GUARD = True
