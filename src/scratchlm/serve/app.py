"""The HTTP routes: OpenAI's /v1 API, /health, and the chat page at /.

Every error is in OpenAI's shape and, where the client can cause it, decided before the
request is queued: a missing or wrong key (401, before the body is read), a bad body (400, from
`schemas`), an unknown model (404), a prompt the context cannot hold (400
`context_length_exceeded`), a full queue (503 with Retry-After). A streamed answer that fails midway can no longer change its status, so it ends with
an error event (`data: {"error": ...}`), which OpenAI's clients raise as an exception. A client
that goes away, streaming or not, cancels its generation and frees its row in the batch.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from scratchlm.errors import UserError
from scratchlm.generate.chat import ChatFormat
from scratchlm.generate.engine import Delta, Engine, Generation
from scratchlm.generate.engine import Request as EngineRequest
from scratchlm.model.gpt import GPT
from scratchlm.serve.errors import APIError
from scratchlm.serve.responses import DONE, Reply, event
from scratchlm.serve.schemas import (
    DEFAULT_MAX_TOKENS,
    ChatRequest,
    CompletionRequest,
    SharedFields,
    validation_error,
)
from scratchlm.serve.worker import Job, Worker, check_limits
from scratchlm.tokenizer.tokenizer import Tokenizer

PAGE_SECURITY = "; ".join(
    [
        # The page is one file: its own inline script and style, calls to this server, nothing else.
        "default-src 'none'",
        "script-src 'unsafe-inline'",
        "style-src 'unsafe-inline'",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""No caching, and no buffering by a proxy (nginx reads X-Accel-Buffering): chunks go out as they come."""


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class BearerAuth:
    """`Authorization: Bearer KEY` on /v1; a plain ASGI layer, so a request without the key is
    refused before its body is read or checked."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/v1" or path.startswith("/v1/")):
            given = dict(scope["headers"]).get(b"authorization")
            if given is None or not hmac.compare_digest(given, self.expected):
                message = "This server needs an API key; send it as the header 'Authorization: Bearer KEY'." if given is None else "The API key is wrong; send the key the server was started with (--api-key or SCRATCHLM_API_KEY)."
                error = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _last_delta(job: Job, request: Request) -> Delta | None:
    """The request's final delta, or None when its client went away first (then it is cancelled)."""

    async def last() -> Delta:
        async for delta in job.deltas():
            final = delta
        return final

    answer = asyncio.ensure_future(last())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        done = answer.done()
        if not done:
            answer.cancel()
            job.generation.cancel()
    return answer.result() if done else None


async def _events(reply: Reply, job: Job, include_usage: bool) -> AsyncIterator[str]:
    try:
        if reply.chat:
            yield reply.chunk("", role=True)
        async for delta in job.deltas():
            if delta.text:
                yield reply.chunk(delta.text)
            if delta.finish_reason is not None:
                yield reply.chunk(finish_reason=delta.finish_reason)
        if include_usage:
            yield reply.usage_chunk(job.generation)
    except APIError as error:
        yield event(error.body())
    yield DONE


class EventStream(StreamingResponse):
    """An answer as server-sent events; its generation is cancelled however the response ends.

    Starlette stops a response whose client disconnected by cancelling it, possibly before its
    body was ever started (so a `finally` in the body would not run): the cancel is here instead.
    Cancelling a finished generation does nothing."""

    def __init__(self, reply: Reply, job: Job, include_usage: bool) -> None:
        super().__init__(_events(reply, job, include_usage), media_type="text/event-stream", headers=SSE_HEADERS)
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.generation.cancel()


def create_app(
    model: GPT,
    tokenizer: Tokenizer,
    *,
    model_name: str,
    chat_template: str | None = None,
    max_batch_size: int = 8,
    queue_size: int = 16,
    api_key: str | None = None,
) -> FastAPI:
    """The server for one model; its engine thread runs while the app does (its lifespan).

    `api_key` turns on bearer-key checks for /v1 (the page and /health stay open).
    """
    check_limits(max_batch_size, queue_size)
    chat = ChatFormat(tokenizer, chat_template)
    worker = Worker(lambda: Engine(model, tokenizer, max_batch_size), queue_size)
    context = model.config.block_size
    page = resources.files("scratchlm.serve").joinpath("page.html").read_text(encoding="utf-8")
    completion_stops = (tokenizer.eot_id,) if tokenizer.eot_id is not None else ()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    # No /docs or /redoc: they load their scripts from a CDN, and nothing here fetches from the internet.
    app = FastAPI(title="scratchlm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker = worker
    if api_key:
        app.add_middleware(BearerAuth, key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(error.errors()))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return error_response(APIError(404, f"Unknown request URL: {request.method} {request.url.path}; see /v1/models, /v1/completions and /v1/chat/completions.", code="unknown_url"))
        if error.status_code == 405:
            return error_response(APIError(405, f"{request.url.path} does not take {request.method} requests.", code="method_not_allowed", headers=dict(error.headers or {})))
        return error_response(APIError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # A bug: the client gets the shape it expects; the server log keeps the traceback.
        return error_response(APIError(500, f"The server failed on this request ({type(error).__name__}); the error is in the server's log.", type="server_error"))

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{model_name}'.", param="model", code="model_not_found")

    def prepare(prompt: list[int], body: SharedFields, new_tokens: int | None, stop_ids: tuple[int, ...], what: str, param: str) -> Generation:
        if len(prompt) >= context:
            raise APIError(400, f"The {what} is {len(prompt)} tokens, but the model's context is {context}, which must also hold the answer; shorten it.", param=param, code="context_length_exceeded")
        # Asked for more than the context leaves, the engine gives what fits (finish_reason "length").
        max_new = new_tokens if new_tokens is not None else min(DEFAULT_MAX_TOKENS, context - len(prompt))
        request = EngineRequest(prompt, max_new, body.sampling(), body.seed, stop_ids, body.stop_strings)
        try:
            return worker.engine.prepare(request)
        except UserError as error:
            raise APIError(400, str(error), param=param) from None

    async def answer(reply: Reply, generation: Generation, body: SharedFields, request: Request) -> Any:
        job = worker.submit(generation)
        if body.stream:
            return EventStream(reply, job, body.include_usage)
        final = await _last_delta(job, request)
        if final is None:
            return Response(status_code=499)  # nobody reads it: the client is gone (nginx's code for that)
        return reply.whole(job.generation, final.finish_reason)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "scratchlm", "context_length": context}

    @app.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_SECURITY})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and load; open without a key (the page reads whether it needs one here)."""
        return {"status": "ok", "model": model_name, "context_length": context, "auth": bool(api_key), "running": worker.running, "waiting": worker.waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        if isinstance(body.prompt, str):
            prompt = tokenizer.encode_ordinary(body.prompt)
        else:
            prompt = body.prompt
        if not prompt and tokenizer.eot_id is not None:
            prompt = [tokenizer.eot_id]  # an empty prompt starts a new document, as OpenAI's models do
        generation = prepare(prompt, body, body.max_tokens, completion_stops, "prompt", "prompt")
        return await answer(Reply(chat=False, model=model_name), generation, body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        check_model(body.model)
        try:
            prompt = chat.encode(body.conversation())
        except UserError as error:
            raise APIError(400, str(error), param="messages") from None
        generation = prepare(prompt, body, body.new_tokens, chat.stop_ids, "conversation", "messages")
        return await answer(Reply(chat=True, model=model_name), generation, body, request)

    return app
