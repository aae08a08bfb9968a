"""The server never goes online: with every connection and name lookup refused except the test
client's own to the server's loopback port, a multimodal spoken conversation over HTTP still works."""

from __future__ import annotations

import base64
import socket

import numpy as np
import openai
from serve_harness import running_server
from test_serve import png_bytes, wav_bytes

import pocketomni as po
from pocketomni.serve import ServeConfig


def test_server_makes_no_outbound_connections(converted_tiny, monkeypatch) -> None:
    folder = converted_tiny("base", "f32")
    allowed: set[tuple[str, int]] = set()
    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if tuple(address[:2]) in allowed:
            return real_connect(self, address)
        attempts.append(f"connect{address!r}")
        raise OSError(f"network access attempted: {address!r}")

    def getaddrinfo(host, port, *args, **kwargs):
        if (host, port) in allowed:
            return real_getaddrinfo(host, port, *args, **kwargs)
        attempts.append(f"getaddrinfo{(host, port)!r}")
        raise OSError(f"name lookup attempted: {host!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, a: attempts.append(f"connect_ex{a!r}") or 1)
    monkeypatch.setattr(socket.socket, "sendto", lambda self, *a: attempts.append("sendto") or 0)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with po.Omni.load_sync(folder, n_threads=1) as omni, running_server(omni, ServeConfig()) as r:
        allowed.add(("127.0.0.1", r.port))
        c = openai.OpenAI(base_url=r.base_url, api_key="x", max_retries=0)
        content = [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png_bytes()).decode()}},
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes()).decode(), "format": "wav"}},
            {"type": "text", "text": "Look and listen."}]
        stream = c.chat.completions.create(model=r.server.model_id, messages=[{"role": "user", "content": content}],
                                           max_tokens=8, stream=True, modalities=["text", "audio"], seed=1,
                                           audio={"voice": "Chelsie", "format": "pcm16"},
                                           extra_body={"speech_options": {"max_codes": 60}})
        pcm = b"".join(base64.b64decode(ch.choices[0].delta.audio.data) for ch in stream
                       if ch.choices and ch.choices[0].delta.audio and ch.choices[0].delta.audio.data)
        assert np.frombuffer(pcm, "<i2").size == 60 * 480  # 60 codes of 20 ms at 24 kHz
        assert c.models.list().data
    assert attempts == []
    # the guard itself works
    s = socket.socket()
    try:
        try:
            s.connect(("192.0.2.1", 80))
        except OSError:
            pass
    finally:
        s.close()
    assert attempts == ["connect('192.0.2.1', 80)"]
