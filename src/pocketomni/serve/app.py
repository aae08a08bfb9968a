"""The ASGI app (Starlette): routes, streamed and whole replies, client disconnects.

    GET  /v1/models              the one loaded model
    POST /v1/chat/completions    OpenAI chat completions, text and speech, streamed or not
    GET  /health                 {"status": "ok", "active": n, "waiting": n}
    GET  /                       the voice page (static/voice.html: talk to the model in a browser)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pocketomni.events import AudioChunk, Done, TextDelta
from pocketomni.omni import Omni
from pocketomni.serve.config import ServeConfig
from pocketomni.serve.encode import FINISH, Reply, audio_payload, chunk, completion, pcm16, sse, usage
from pocketomni.serve.errors import APIError, error_body, error_response, from_exception
from pocketomni.serve.limits import read_body
from pocketomni.serve.request import parse_request
from pocketomni.serve.turn import Server, Turn

__all__ = ["create_app"]

log = logging.getLogger("pocketomni.serve")


class ClientGone(Exception):
    """The client closed the connection before its reply was complete."""


async def until_disconnect(receive: Receive, work: Awaitable[Any], on_gone: Callable[[], None]) -> Any:
    """Run `work` until it ends or the client disconnects (then call `on_gone`, cancel `work`, raise
    ClientGone). The request body must have been read already."""
    task = asyncio.ensure_future(work)

    async def listen() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(listen())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    if task.done():
        watcher.cancel()
        return task.result()
    on_gone()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, ClientGone):
        pass
    raise ClientGone


class StreamedReply:
    """An SSE reply (ASGI app): the first event is awaited before the status line, so errors found
    while preparing the turn (bad media, a full context, a full queue) still get their status code."""

    def __init__(self, turn: Turn, reply: Reply, include_usage: bool) -> None:
        self.turn, self.reply, self.include_usage = turn, reply, include_usage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self._produce(scope, send), self.turn.client_gone)
        except ClientGone:
            log.info("%s: client disconnected, generation cancelled", self.reply.id)

    async def _produce(self, scope: Scope, send: Send) -> None:
        r, speech = self.reply, self.turn.req.speech is not None
        started = False
        async with aclosing(self.turn.events()) as events:
            try:
                async for ev in events:
                    if not started:
                        await send({"type": "http.response.start", "status": 200, "headers": [
                            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no")]})
                        started = True
                        first: dict[str, Any] = {"role": "assistant", "content": None if speech else ""}
                        await self._send(send, chunk(r, first))
                    if isinstance(ev, TextDelta):
                        delta = {"audio": {"id": r.audio_id, "transcript": ev.text}} if speech else {"content": ev.text}
                        await self._send(send, chunk(r, delta))
                    elif isinstance(ev, AudioChunk):
                        data = base64.b64encode(pcm16(ev.samples)).decode("ascii")
                        await self._send(send, chunk(r, {"audio": {"id": r.audio_id, "data": data}}))
                    elif isinstance(ev, Done):
                        await self._send(send, chunk(r, {}, FINISH[ev.finish_reason]))
                        if self.include_usage:
                            await self._send(send, chunk(r, None, usage_=usage(ev, self.turn.cached_tokens)))
            except Exception as e:
                err = from_exception(e)
                if err.status >= 500 and err.code not in ("timeout", "queue_timeout"):
                    log.exception("%s failed", r.id)
                if not started:
                    await error_response(err)(scope, _no_receive, send)
                    return
                await send({"type": "http.response.body", "body": sse(error_body(err)), "more_body": True})
        await send({"type": "http.response.body", "body": sse("[DONE]"), "more_body": False})

    @staticmethod
    async def _send(send: Send, obj: dict[str, Any]) -> None:
        await send({"type": "http.response.body", "body": sse(obj), "more_body": True})


async def _no_receive() -> Any:
    raise RuntimeError("the body was read already")


async def _whole_reply(turn: Turn, reply: Reply) -> Response:
    """Collect the turn; a spoken reply's audio goes out as one base64 WAV (or pcm16)."""
    sp = turn.req.speech
    pieces: list[bytes] = []
    done: Done | None = None
    async with aclosing(turn.events()) as events:
        async for ev in events:
            if isinstance(ev, AudioChunk):
                pieces.append(pcm16(ev.samples))
            elif isinstance(ev, Done):
                done = ev
    if done is None:
        raise APIError(500, "the turn ended without a result", type="server_error", code="internal_error")
    audio = audio_payload(b"".join(pieces), sp.format) if sp is not None else None
    return JSONResponse(completion(reply, done, turn.cached_tokens, audio))


def create_app(omni: Omni, config: ServeConfig | None = None) -> Starlette:
    """The server's ASGI app on a loaded model (the caller keeps ownership of `omni`)."""
    server = Server(omni, config or ServeConfig())

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": server.model_id, "object": "model", "created": 0, "owned_by": "pocketomni",
             "capabilities": {k: v for k, v in vars(omni.capabilities).items()},
             "voices": list(server.pool.voices())}]})

    async def page(request: Request) -> Response:
        from importlib.resources import files

        return HTMLResponse((files("pocketomni.serve") / "static" / "voice.html").read_text("utf-8"))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "active": server.admission.active, "waiting": server.admission.waiting})

    async def chat_completions(request: Request) -> Response | StreamedReply:
        request_id = uuid.uuid4().hex[:24]
        try:
            raw = await read_body(request, server.config.max_body_bytes)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from e
            req = parse_request(body)
            if req.model != server.model_id:
                raise APIError(404, f"the model {req.model!r} does not exist on this server; it serves "
                               f"{server.model_id!r} (GET /v1/models)", param="model", code="model_not_found")
        except Exception as e:  # noqa: BLE001
            return error_response(from_exception(e))
        turn = Turn(server, req, request_id)
        reply = Reply(request_id, server.model_id)
        if req.stream:
            return StreamedReply(turn, reply, req.include_usage)
        try:
            return await until_disconnect(request.receive, _whole_reply(turn, reply), turn.client_gone)
        except ClientGone:
            log.info("%s: client disconnected, generation cancelled", reply.id)
            return Response(status_code=499)
        except Exception as e:
            err = from_exception(e)
            if err.status >= 500 and err.code not in ("timeout", "queue_timeout"):
                log.exception("%s failed", reply.id)
            return error_response(err)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                       code=code))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await server.pool.close()  # the cached conversations; the model stays the caller's

    app = Starlette(
        routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/health", health), Route("/", page)],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app

