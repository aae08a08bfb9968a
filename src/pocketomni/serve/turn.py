"""One request's turn: wait for a slot, convert the messages, lease a chat, stream its events with a
deadline, then give the chat back to the prefix cache (or close it)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from pocketomni.chat.async_bridge import ThreadStream
from pocketomni.errors import PocketOmniError
from pocketomni.events import Done, Event
from pocketomni.omni import Omni
from pocketomni.serve.config import ServeConfig
from pocketomni.serve.content import MessageConverter
from pocketomni.serve.errors import APIError
from pocketomni.serve.limits import Admission
from pocketomni.serve.pool import ChatPool, Lease
from pocketomni.serve.request import ChatRequest

__all__ = ["Server", "Turn", "TurnRecord"]


@dataclass
class TurnRecord:
    """What happened to one request (the last few hundred are kept in `Server.records`).

    finish_reason: the SDK's ("stop", "length", "stop_string", "cancelled"), or "disconnected",
      "timeout", "error". tokens_after_cancel: reply tokens the chat decoded after the server saw the
      client go (the SDK stops within one token).
    """

    request_id: str
    finish_reason: str = "error"
    reused_messages: int = 0
    cached_tokens: int = 0
    prompt_tokens: int = 0
    media_tokens: int = 0
    reply_tokens: int = 0
    audio_codes: int = 0
    text: str = ""
    events: int = 0
    tokens_after_cancel: int | None = None


class Server:
    """The state one server process shares between requests: the model, limits, chats, records."""

    def __init__(self, omni: Omni, config: ServeConfig) -> None:
        self.omni = omni
        self.config = config
        self.model_id = config.model_id or Path(omni.folder.root).name
        self.admission = Admission(config.max_active, config.max_queue, config.queue_timeout)
        self.pool = ChatPool(omni, config.cache_size)
        self.records: deque[TurnRecord] = deque(maxlen=512)

    def record(self, request_id: str) -> TurnRecord | None:
        return next((r for r in self.records if r.request_id == request_id), None)


class Turn:
    """Async-iterate `events()` once; call `client_gone()` before cancelling it for a disconnect."""

    def __init__(self, server: Server, req: ChatRequest, request_id: str) -> None:
        self.server, self.req = server, req
        self.audio_id = f"audio-{request_id}"
        self.rec = TurnRecord(request_id)
        server.records.append(self.rec)
        self.lease: Lease | None = None
        self._tokens_at_cancel: int | None = None
        self._gone = False  # the client left: stop even if the task's cancellation is lost (see _run)

    @property
    def cached_tokens(self) -> int:
        return self.rec.cached_tokens

    def client_gone(self) -> None:
        """The client disconnected: note how far the chat is, before its turn is cancelled."""
        self.rec.finish_reason = "disconnected"
        self._gone = True
        if self.lease is not None:
            self._tokens_at_cancel = self.lease.chat.n_tokens

    async def events(self) -> AsyncIterator[Event]:
        server, rec = self.server, self.rec
        async with server.admission.slot():
            conv = MessageConverter(server.config.allow_local_files, server.pool.transcripts.get)
            try:
                msgs, keys = conv.convert(self.req.messages)
                self.lease = lease = await server.pool.checkout(keys, self.req.speech)
                rec.reused_messages, rec.cached_tokens = lease.reused, lease.cached_tokens
                async for ev in self._run(lease, msgs[lease.reused:]):
                    yield ev
            finally:
                conv.close()

    async def _run(self, lease: Lease, new: list[dict]) -> AsyncIterator[Event]:
        rec, timeout = self.rec, self.server.config.request_timeout
        reply: str | None = None
        unchanged = False  # an input error before any event: the chat is as it was
        stream: ThreadStream[Event] | None = None
        try:
            try:
                stream = lease.chat.send(messages=new, options=self.req.options)
            except PocketOmniError:
                unchanged = True
                raise
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    ev = await asyncio.wait_for(stream.__anext__(), max(left, 0.0))
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    rec.finish_reason = "timeout"
                    raise APIError(504, f"the reply took longer than this server's limit of {timeout:g} s and was "
                                   "stopped; ask for fewer tokens (max_tokens) or start the server with a larger "
                                   "--request-timeout", type="server_error", code="timeout") from None
                except PocketOmniError:
                    unchanged = rec.events == 0
                    raise
                if self._gone:  # Python < 3.12's wait_for can swallow a cancel that races a result
                    rec.finish_reason = "disconnected"
                    return
                rec.events += 1
                if isinstance(ev, Done):
                    rec.finish_reason = ev.finish_reason
                    u = ev.usage
                    rec.prompt_tokens, rec.media_tokens, rec.reply_tokens = u.prompt_tokens, u.media_tokens, u.reply_tokens
                    rec.audio_codes, rec.text = u.audio_codes, ev.text
                    if ev.finish_reason != "cancelled":
                        reply = ev.text
                yield ev
        finally:
            if stream is not None:
                await asyncio.shield(stream.aclose())  # the worker has stopped when this returns
            if self._tokens_at_cancel is not None:
                rec.tokens_after_cancel = lease.chat.n_tokens - self._tokens_at_cancel
            if reply is not None or unchanged:
                await asyncio.shield(self.server.pool.checkin(
                    lease, reply, self.audio_id if self.req.speech is not None else None))
            else:  # cancelled, timed out or failed mid-turn: the conversation is not worth keeping
                await asyncio.shield(lease.chat.aclose())
