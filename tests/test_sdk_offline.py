"""Offline guarantee: loading a model and a full multimodal chat never open a network connection."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

import pocketomni as po


class NetworkUsed(AssertionError):
    pass


def _block(monkeypatch: pytest.MonkeyPatch, attempts: list[str], *, sockets: bool) -> None:
    def refuse(name: str):
        def fn(*args, **kwargs):
            attempts.append(name)
            raise NetworkUsed(f"network access attempted: {name}{args[:2]}")
        return fn

    if sockets:  # no socket may even be created
        monkeypatch.setattr(socket, "socket", refuse("socket.socket"))
    else:  # asyncio needs a local socketpair for its loop; any connection or lookup is refused
        monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
        monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
        monkeypatch.setattr(socket.socket, "sendto", refuse("socket.sendto"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))


def _media():
    img = (np.random.default_rng(1).random((56, 84, 3)) * 255).astype(np.uint8)
    t = np.arange(16000) / 16000
    return img, ((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)


def test_sync_chat_with_sockets_blocked(converted_tiny, monkeypatch, tmp_path) -> None:
    folder = converted_tiny("base", "f32")
    attempts: list[str] = []
    _block(monkeypatch, attempts, sockets=True)
    with pytest.raises(NetworkUsed):
        socket.socket()  # the guard works
    attempts.clear()
    img, clip = _media()
    with po.Omni.load_sync(folder, n_threads=1) as omni:
        chat = omni.chat(max_tokens=4)
        d1 = next(e for e in chat.send_sync("Look and listen", images=[img], audio=[clip]) if isinstance(e, po.Done))
        d2 = next(e for e in chat.send_sync("And now?") if isinstance(e, po.Done))
        chat.save(tmp_path / "c.pochat")
        omni.restore_chat(tmp_path / "c.pochat").close()
    assert d1.usage.media_tokens > 0 and d2.usage.reply_tokens == 4
    assert attempts == []


def test_async_chat_with_connections_blocked(converted_tiny, monkeypatch) -> None:
    folder = converted_tiny("base", "f32")
    attempts: list[str] = []
    _block(monkeypatch, attempts, sockets=False)
    img, clip = _media()

    async def main() -> po.Done:
        async with po.Omni.load(folder, n_threads=1) as omni:
            chat = omni.chat(max_tokens=4)
            events = [ev async for ev in chat.send("Look and listen", images=[img], audio=[clip])]
            return events[-1]

    done = asyncio.run(main())
    assert isinstance(done, po.Done) and done.usage.reply_tokens == 4
    assert attempts == []
