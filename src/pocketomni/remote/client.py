"""`Omni.connect(base_url)`: the Chat API against an OpenAI-compatible server.

    omni = po.Omni.connect("http://127.0.0.1:8000/v1")        # pocketomni serve, vLLM-Omni, llama-server
    chat = omni.chat(speech=True, voice="Ethan")
    async for ev in chat.send("Hello!"):                         # TextDelta, AudioChunk, Done: as locally
        ...

The conversation lives here and goes to the server whole each turn (the server reuses its cached
prefix). Streaming servers send audio as pcm16 deltas; `stream=False` reads a whole reply instead
(vLLM-Omni sends speech only that way). Breaking out of `send` closes the connection, which
`pocketomni serve` takes as a cancel. Only the standard library's HTTP client is used.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pocketomni.chat.async_bridge import CancelFlag, ThreadStream
from pocketomni.errors import OptionsError, PocketOmniError
from pocketomni.events import Done, Event, TextDelta
from pocketomni.options import GenerationOptions, SpeechOptions, resolve_options
from pocketomni.remote.wire import (
    error_from_body,
    events_from_completion,
    events_from_sse,
    media_items,
    request_body,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["RemoteChat", "RemoteOmni"]


class RemoteOmni:
    """A model behind an OpenAI-compatible server. `chat()` makes conversations, as `Omni.chat` does."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 600.0, stream: bool = True) -> None:
        u = urlsplit(base_url.rstrip("/"))
        if u.scheme not in ("http", "https") or not u.hostname:
            raise OptionsError(f"base_url must look like http://HOST:PORT/v1, got {base_url!r}")
        self._scheme, self._host, self._port, self._path = u.scheme, u.hostname, u.port, u.path
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self.timeout, self.stream = timeout, stream
        self.model = model or self._first_model()

    def _conn(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout)

    def _request(self, method: str, path: str, body: Any = None) -> tuple[http.client.HTTPConnection, Any]:
        conn = self._conn()
        try:
            conn.request(method, self._path + path, None if body is None else json.dumps(body), self._headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise PocketOmniError(f"cannot reach {self._scheme}://{self._host}:{self._port}{self._path} ({e}); "
                                  "is the server running (pocketomni serve MODEL_DIR)?") from e
        if resp.status >= 400:
            raw = resp.read()
            conn.close()
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = raw.decode("utf-8", "replace")
            raise error_from_body(obj, resp.status)
        return conn, resp

    def _first_model(self) -> str:
        conn, resp = self._request("GET", "/models")
        try:
            data = json.loads(resp.read()).get("data") or []
        finally:
            conn.close()
        if not data:
            raise PocketOmniError("the server lists no models (GET /models); pass model=...")
        return str(data[0]["id"])

    def chat(self, system: str | None = None, speech: bool = False, *, voice: str | None = None,
             speech_options: SpeechOptions | Mapping[str, Any] | None = None, options: Any = None,
             **overrides: Any) -> RemoteChat:
        """A new conversation (arguments as in `Omni.chat`; the server picks its presets)."""
        if not speech and (voice is not None or speech_options is not None):
            raise OptionsError("voice and speech_options need chat(speech=True)")
        sp = None
        if speech:
            so = speech_options
            if isinstance(so, Mapping):
                so = SpeechOptions.from_dict(so)
            opts = {k: v for k, v in dataclasses.asdict(so).items() if v is not None} if so is not None else {}
            sp = {"voice": voice, "options": opts}
        return RemoteChat(self, system, sp, resolve_options(GenerationOptions(), options, overrides))

    def close(self) -> None:
        """Nothing to free (connections close after each turn); for symmetry with Omni."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteChat:
    """One conversation on a server: `send` / `send_sync` yield TextDelta, AudioChunk and Done."""

    def __init__(self, omni: RemoteOmni, system: str | None, speech: dict[str, Any] | None,
                 options: GenerationOptions) -> None:
        self._omni, self.system, self._speech, self.options = omni, system, speech, options
        self.speech = speech is not None
        self._messages: list[dict[str, Any]] = [] if system is None else [{"role": "system", "content": system}]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The conversation so far, as OpenAI messages (media inline)."""
        return list(self._messages)

    def send(self, text: str | None = None, *, images: Any = None, audio: Any = None, options: Any = None,
             **overrides: Any) -> ThreadStream[Event]:
        """Stream one turn: `async for ev in chat.send(...)`. Breaking out closes the connection."""
        user, opts = self._user(text, images, audio), resolve_options(self.options, options, overrides)
        return ThreadStream(lambda flag: self._turn(user, opts, flag))

    def send_sync(self, text: str | None = None, *, images: Any = None, audio: Any = None, options: Any = None,
                  **overrides: Any) -> Iterator[Event]:
        """The blocking twin of `send`."""
        user, opts = self._user(text, images, audio), resolve_options(self.options, options, overrides)
        return self._turn(user, opts, CancelFlag())

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        del self._messages[1 if self.system is not None else 0:]

    @staticmethod
    def _user(text: str | None, images: Any, audio: Any) -> dict[str, Any]:
        def as_list(x: Any) -> list[Any]:
            if x is None:
                return []
            return list(x) if isinstance(x, list) else [x]

        parts = media_items(as_list(images), as_list(audio))
        if text:
            parts.append({"type": "text", "text": text})
        if not parts:
            raise OptionsError("a turn needs text, images or audio; got nothing to send")
        return {"role": "user", "content": text if len(parts) == 1 and text else parts}

    def _turn(self, user: dict[str, Any], opts: GenerationOptions, flag: CancelFlag) -> Iterator[Event]:
        o = self._omni
        fields = {k: v for k, v in dataclasses.asdict(opts).items()}
        body = request_body(o.model, self._messages + [user], fields, stream=o.stream, speech=self._speech)
        conn, resp = o._request("POST", "/chat/completions", body)
        stop = threading.Event()

        def hang_up() -> None:  # unblocks a read waiting for the server when the turn is cancelled
            while not stop.wait(0.05):
                if flag.is_set:
                    if conn.sock is not None:
                        try:
                            conn.sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    return

        watcher = threading.Thread(target=hang_up, daemon=True)
        watcher.start()
        text: list[str] = []
        try:
            if o.stream:
                lines = (raw.decode("utf-8") for raw in iter(resp.readline, b""))
                events = events_from_sse(lines)
            else:
                events = events_from_completion(json.loads(resp.read()))
            for ev in events:
                if flag.is_set:
                    break
                if isinstance(ev, TextDelta):
                    text.append(ev.text)
                if isinstance(ev, Done):
                    self._messages += [user, {"role": "assistant", "content": ev.text}]
                yield ev
            else:
                return
            yield Done(text="".join(text), finish_reason="cancelled")
        except (OSError, http.client.HTTPException, ValueError, PocketOmniError) as e:
            if flag.is_set:  # our own hang-up
                yield Done(text="".join(text), finish_reason="cancelled")
                return
            if isinstance(e, PocketOmniError):
                raise
            raise PocketOmniError(f"the connection to the server broke during the reply ({e})") from e
        finally:
            stop.set()
            conn.close()
