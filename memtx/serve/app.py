"""The HTTP API: sessions of memory over one model, generation streamed as server-sent events.

    GET    /health                      the model, session counts
    GET    /sessions                    every session (id, tokens read, in RAM or on disk)
    POST   /sessions                    create one: {"id"?: str, "text"?: str}
    GET    /sessions/{id}               one session
    DELETE /sessions/{id}
    POST   /sessions/{id}/append        {"text": str}: read into the session's memory
    POST   /sessions/{id}/generate      {"prompt", "max_new_tokens", sampling, "stop",
                                        "stream", "keep"}: SSE ``token`` events, then ``done``
    GET    /sessions/{id}/logits        next-token logits (to check what a session holds)
    GET    /sessions/{id}/snapshot      the session as a snapshot file (``memtx.snapshot``)
    PUT    /sessions/{id}/snapshot      create or replace a session from a snapshot file
    GET    /docs, /openapi.json         the OpenAPI description

Every error is a JSON object ``{"error": "..."}`` with a 4xx status: 400 malformed JSON or
text that is not UTF-8, 401 a missing or wrong bearer token, 404 an unknown session, 409
a session that exists already or a snapshot of another model, 413 a body or text over the
limits, 422 a field out of range; never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from memtx import __version__, snapshot
from memtx.data.tokenizers import Tokenizer
from memtx.errors import DataError, MemtxError
from memtx.generate import Generation, Sampler, TextDecoder
from memtx.models.protocol import SegmentModel
from memtx.reading import Context, next_logits, start_context
from memtx.serve.engine import Engine, GenerationJob
from memtx.serve.store import SessionStore, UnknownSession

__all__ = ["Limits", "create_app"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Attributes:
        max_body_bytes: a request body larger than this gets 413.
        max_text_bytes: an append's text or a prompt (UTF-8) larger than this gets 413.
        max_new_tokens: a generation asking for more gets 422.
    """

    max_body_bytes: int = 4 << 20
    max_text_bytes: int = 1 << 20
    max_new_tokens: int = 4096


class CreateSession(BaseModel):
    id: str | None = Field(None, description="Session id (default: a random one).")
    text: str = Field("", description="Text to read into the new session.")


class Append(BaseModel):
    text: str = Field(description="Text to read into the session's memory.")


class GenerateRequest(BaseModel):
    prompt: str = Field("", description="Read after the session's text, then continued.")
    max_new_tokens: int = Field(64, ge=0)
    temperature: float = Field(1.0, ge=0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: list[str] = Field(default_factory=list, description="Stop strings (not returned).")
    stream: bool = Field(True, description="Server-sent events (else one JSON answer).")
    keep: bool = Field(True, description="The session keeps the prompt and the output.")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Guard:
    """ASGI middleware: the bearer token (when set) and the body size limit, for every route."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int) -> None:
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.token is not None:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                response = _error(401, "a valid 'Authorization: Bearer <token>' is required")
                response.headers["WWW-Authenticate"] = "Bearer"
                return await response(scope, receive, send)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            message = f"the request body exceeds the limit of {self.max_body_bytes} bytes"
            return await _error(413, message)(scope, receive, send)
        await self.app(scope, receive, send)


def _utf8(text: str, *, field: str, limit: int) -> bytes:
    """``text`` as UTF-8, refusing lone surrogates (400) and texts over ``limit`` (413)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HTTPException(
            400, f"{field} is not valid UTF-8 text (a lone surrogate at position {exc.start})"
        ) from None
    if len(data) > limit:
        raise HTTPException(413, f"{field} has {len(data)} bytes; the limit is {limit}")
    return data


def create_app(
    *,
    model: SegmentModel,
    tokenizer: Tokenizer,
    store: SessionStore,
    token: str | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """The FastAPI application over ``store``'s sessions (see the module docstring)."""
    limits = limits or Limits()
    engine_box: dict[str, Engine] = {}
    locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine_box["engine"] = app.state.engine = Engine(model)
        try:
            yield
        finally:  # every session is on disk already (written through)
            engine_box.pop("engine").close()

    app = FastAPI(title="memtx serve", version=__version__, lifespan=lifespan)
    app.state.store = store
    app.add_middleware(_Guard, token=token, max_body_bytes=limits.max_body_bytes)

    def lock(session_id: str) -> asyncio.Lock:
        return locks.setdefault(session_id, asyncio.Lock())

    device = start_context(model).pending.device

    def tokens_of(data: bytes) -> torch.Tensor:
        return torch.from_numpy(tokenizer.encode(data).astype("int64"))[None].to(device)

    async def get(session_id: str) -> Context:
        if not store.exists(session_id):
            raise UnknownSession(f"no session {session_id!r}")
        return await asyncio.to_thread(store.get, session_id)

    async def read_into(context: Context, data: bytes) -> Context:
        if not data:
            return context
        return await asyncio.wrap_future(engine_box["engine"].read(context, tokens_of(data)))

    def describe(session_id: str, context: Context | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"id": session_id, "in_memory": store.in_memory(session_id)}
        if context is not None:
            info |= {"tokens_read": context.tokens_read, "pending": context.pending.shape[1]}
        return info

    @app.exception_handler(MemtxError)
    async def memtx_error(_: Request, exc: MemtxError) -> JSONResponse:
        if isinstance(exc, UnknownSession):
            return _error(404, str(exc))
        return _error(409 if isinstance(exc, snapshot.SnapshotMismatch) else 400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return _error(400, "the body is not valid JSON (UTF-8)")  # e.g. Latin-1 bytes
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "the body is not valid JSON (UTF-8)")
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors]
        return _error(422, "; ".join(parts))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        ids = store.ids()
        return {
            "status": "ok",
            "model": str(store.identity),
            "version": __version__,
            "sessions": len(ids),
            "sessions_in_memory": store.count_in_memory,
        }

    @app.get("/sessions")
    async def list_sessions() -> dict[str, Any]:
        return {"sessions": [describe(i) for i in store.ids()]}

    @app.post("/sessions", status_code=201)
    async def create(body: CreateSession) -> dict[str, Any]:
        session_id = store.check_id(body.id) if body.id is not None else uuid.uuid4().hex
        data = _utf8(body.text, field="text", limit=limits.max_text_bytes)
        async with lock(session_id):
            if store.exists(session_id):
                raise HTTPException(409, f"session {session_id!r} exists already")
            context = await read_into(start_context(model, device=device), data)
            await asyncio.to_thread(store.put, session_id, context)
        return describe(session_id, context)

    @app.get("/sessions/{session_id}")
    async def show(session_id: str) -> dict[str, Any]:
        return describe(session_id, await get(session_id))

    @app.delete("/sessions/{session_id}")
    async def delete(session_id: str) -> dict[str, Any]:
        async with lock(session_id):
            store.delete(session_id)
        locks.pop(session_id, None)
        return {"deleted": session_id}

    @app.post("/sessions/{session_id}/append")
    async def append(session_id: str, body: Append) -> dict[str, Any]:
        data = _utf8(body.text, field="text", limit=limits.max_text_bytes)
        async with lock(session_id):
            context = await read_into(await get(session_id), data)
            await asyncio.to_thread(store.put, session_id, context)
        return {**describe(session_id, context), "appended_bytes": len(data)}

    @app.get("/sessions/{session_id}/logits")
    async def logits(session_id: str) -> dict[str, Any]:
        async with lock(session_id):
            context = await get(session_id)
            values = await asyncio.wrap_future(
                engine_box["engine"].call(lambda: next_logits(model, context))
            )
        return {"tokens_read": context.tokens_read, "logits": values[0].tolist()}

    @app.get("/sessions/{session_id}/snapshot")
    async def download(session_id: str) -> Response:
        async with lock(session_id):
            data = await asyncio.to_thread(store.snapshot_bytes, session_id)
        return Response(data, media_type="application/octet-stream")

    @app.put("/sessions/{session_id}/snapshot")
    async def upload(session_id: str, request: Request) -> dict[str, Any]:
        store.check_id(session_id)
        data = await request.body()
        async with lock(session_id):
            saved = await asyncio.to_thread(
                snapshot.from_bytes, data, model=model, identity=store.identity,
                where="the uploaded snapshot",
            )  # fmt: skip
            context = Context(saved.memory, saved.pending, saved.tokens_read)
            await asyncio.to_thread(store.put_bytes, session_id, data, context)
        return describe(session_id, context)

    @app.post("/sessions/{session_id}/generate")
    async def generate(session_id: str, body: GenerateRequest) -> Response:
        if body.max_new_tokens > limits.max_new_tokens:
            raise HTTPException(
                422,
                f"max_new_tokens is {body.max_new_tokens}; the limit is {limits.max_new_tokens}",
            )
        prompt = _utf8(body.prompt, field="prompt", limit=limits.max_text_bytes)
        sampler = Sampler(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p)
        if not store.exists(session_id):
            raise UnknownSession(f"no session {session_id!r}")
        events = _generate(session_id, body, prompt, sampler)
        if body.stream:
            return StreamingResponse(events, media_type="text/event-stream")
        text, final = [], {}
        async for kind, payload in _collect(events):
            if kind == "token":
                text.append(payload["text"])
            elif kind == "error":
                raise HTTPException(payload.get("status", 400), payload["error"])
            else:
                final = payload
        return JSONResponse({**final, "text": "".join(text)})

    async def _generate(
        session_id: str, body: GenerateRequest, prompt: bytes, sampler: Sampler
    ) -> AsyncIterator[str]:
        async with lock(session_id):
            try:
                before = await get(session_id)
                context = await read_into(before, prompt)
                generation = Generation(
                    model, context, max_new_tokens=body.max_new_tokens, sampler=sampler,
                    seed=body.seed,
                )  # fmt: skip
            except MemtxError as exc:
                status = 404 if isinstance(exc, UnknownSession) else 400
                yield _sse("error", {"error": str(exc), "status": status})
                return
            loop = asyncio.get_running_loop()
            items: asyncio.Queue[str | Context | BaseException] = asyncio.Queue()
            job = GenerationJob(
                generation,
                TextDecoder(tokenizer, stop=body.stop),
                emit=lambda item: loop.call_soon_threadsafe(items.put_nowait, item),
            )
            engine_box["engine"].generate(job)
            try:
                while True:
                    item = await items.get()
                    if isinstance(item, str):
                        yield _sse("token", {"text": item})
                    elif isinstance(item, BaseException):
                        yield _sse("error", {"error": str(item), "status": 503})
                        return
                    else:
                        if body.keep:
                            await asyncio.to_thread(store.put, session_id, item)
                        kept = item if body.keep else before
                        done = {"tokens": generation.produced, "tokens_read": kept.tokens_read}
                        yield _sse("done", {**describe(session_id), **done})
                        return
            finally:
                job.cancel()

    return app


def _sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n"


async def _collect(events: AsyncIterator[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The (event, payload) pairs of our own SSE text (for ``"stream": false``)."""
    async for message in events:
        kind, data = message.split("\n", 1)
        yield kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))


def check_token(token: str | None) -> str | None:
    """A bearer token must be non-empty printable ASCII without spaces."""
    if token is not None and (not token or not token.isascii() or not token.isprintable()):
        raise DataError("--token must be non-empty printable ASCII")
    if token is not None and " " in token:
        raise DataError("--token must not contain spaces")
    return token
