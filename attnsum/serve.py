"""`attnsum serve`: an HTTP service for extractive summaries (Starlette on uvicorn).

    POST /summarize   {"text": "..."} or {"texts": ["...", ...]}, optional "k" (default 3) and
                      "trigram_blocking" (default true)
                      -> {"summaries": [{"sentences": [...], "indices": [...], "scores": [...]}]}
    GET  /health      -> {"status": "ok", "checkpoint": ..., "preset": ..., "plan": ..., ...}

Binds 127.0.0.1 by default. Concurrent requests are batched together (up to `max_batch`
documents, waiting at most `max_wait_ms` for company). Limits, each answered with a JSON error
and the service staying up: body size (413), documents per request (413), characters per
document (413), invalid JSON or fields (400), documents that cannot be summarized (422), unknown
paths (404) and methods (405). `timeout_s` bounds a request's whole work (reading, preparing,
waiting for the model, scoring): past it the answer is 504 and the work not yet done is dropped
(preparation stops at the next document; a batch leaves out requests that gave up). Documents are
prepared on `prep_threads` threads, the model runs on one. Ctrl-C or SIGTERM shut it down
gracefully: requests in flight are answered first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .precision import DEFAULT_PRECISION
from .preprocess import MAX_CHARS

if TYPE_CHECKING:  # the model code loads with the service, not with `attnsum serve --help`
    from .summarizer import Summarizer

log = logging.getLogger("attnsum.serve")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body: int = 1_000_000  # bytes
    max_docs: int = 64  # documents per request
    max_chars: int = MAX_CHARS  # characters per document
    max_batch: int = 32  # documents per model call
    max_wait_ms: float = 10.0
    timeout_s: float = 30.0
    header_timeout_s: float = 10.0  # a connection's request headers, whole, within this
    prep_threads: int = 2  # threads that split and tokenize documents


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Batcher:
    """Collects concurrent requests into model batches; the model runs on one worker thread."""

    def __init__(self, summarizer: Summarizer, cfg: ServeConfig):
        self.summarizer, self.cfg = summarizer, cfg
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnsum-model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=True)

    async def submit(self, prepared, k: int, trigram_blocking: bool):
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((prepared, k, trigram_blocking, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + self.cfg.max_wait_ms / 1000
            while n < self.cfg.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except (TimeoutError, ValueError):
                    break
                items.append(item)
                n += len(item[0])
            groups: dict = {}
            for it in items:
                groups.setdefault((it[1], it[2]), []).append(it)
            for (k, tri), group in groups.items():
                group = [it for it in group if not it[3].done()]  # gave up (deadline): dropped
                if not group:
                    continue
                docs = [p for it in group for p in it[0]]
                try:
                    summaries = await loop.run_in_executor(
                        self.pool, self.summarizer.score, docs, k, tri)
                except Exception as e:  # the model failed: answer every waiting request
                    log.exception("model call failed")
                    for it in group:
                        if not it[3].done():
                            it[3].set_exception(e)
                    continue
                pos = 0
                for it in group:
                    if not it[3].done():
                        it[3].set_result(summaries[pos:pos + len(it[0])])
                    pos += len(it[0])


def _parse(body: bytes, cfg: ServeConfig) -> tuple[list[str], int, bool]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HTTPError(400, f"the body is not valid UTF-8 JSON ({e})") from None
    except RecursionError:  # JSON nested deeper than the parser's recursion limit
        raise HTTPError(400, "the body's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise HTTPError(400, 'expected a JSON object: {"text": "..."} or {"texts": [...]}')
    if ("text" in data) == ("texts" in data):
        raise HTTPError(400, 'give exactly one of "text" (a string) or "texts" (a list)')
    texts = [data["text"]] if "text" in data else data["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise HTTPError(400, '"text" must be a string and "texts" a list of strings')
    if not texts:
        raise HTTPError(400, '"texts" is empty')
    if len(texts) > cfg.max_docs:
        raise HTTPError(413, f"{len(texts)} documents in one request; the limit is {cfg.max_docs}")
    for i, t in enumerate(texts):
        if len(t) > cfg.max_chars:
            raise HTTPError(413, f"document {i} has {len(t)} characters; the limit is "
                            f"{cfg.max_chars}")
    k = data.get("k", 3)
    tri = data.get("trigram_blocking", True)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100:
        raise HTTPError(400, '"k" must be an integer from 1 to 100')
    if not isinstance(tri, bool):
        raise HTTPError(400, '"trigram_blocking" must be true or false')
    return texts, k, tri


def create_app(summarizer: Summarizer, cfg: ServeConfig):
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from .checkpoints import weights_digest
    from .summarizer import InputError

    batcher = Batcher(summarizer, cfg)
    prep_pool = ThreadPoolExecutor(max_workers=cfg.prep_threads, thread_name_prefix="attnsum-prep")

    async def read_body(request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body:
            raise HTTPError(413, f"the body has {length} bytes; the limit is {cfg.max_body}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body:
                raise HTTPError(413, f"the body exceeds the limit of {cfg.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def work(request, cancelled: threading.Event):
        texts, k, tri = _parse(await read_body(request), cfg)
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(prep_pool, summarizer.prepare, texts, cancelled)
        except InputError as e:
            raise HTTPError(422, str(e)) from None
        return await batcher.submit(prepared, k, tri)

    async def summarize(request):
        cancelled = threading.Event()
        try:
            try:
                summaries = await asyncio.wait_for(work(request, cancelled), cfg.timeout_s)
            except TimeoutError:
                cancelled.set()  # stops its preparation at the next document
                raise HTTPError(504, f"the request took longer than {cfg.timeout_s} s") from None
        except HTTPError as e:
            return JSONResponse({"error": e.message}, status_code=e.status)
        except Exception:
            log.exception("request failed")
            return JSONResponse({"error": "internal error"}, status_code=500)
        return JSONResponse({"summaries": [s.to_dict() for s in summaries]})

    model_id = {"model": summarizer.checkpoint.name if summarizer.checkpoint else None,
                "weights_sha256": weights_digest(summarizer.checkpoint)}

    async def health(request):  # names the model, not where it lies on this machine
        mcfg = summarizer.model.cfg
        return JSONResponse({"status": "ok", **model_id,
                             "preset": mcfg.preset, "plan": str(mcfg.plan),
                             "max_len": summarizer.cfg.max_len,
                             "device": str(summarizer.device),
                             "precision": summarizer.precision.name})

    async def http_error(request, exc: HTTPException):  # 404, 405 and the like, as JSON
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()
        prep_pool.shutdown(wait=True, cancel_futures=True)

    return Starlette(routes=[Route("/summarize", summarize, methods=["POST"]),
                             Route("/health", health, methods=["GET"])], lifespan=lifespan,
                     exception_handlers={HTTPException: http_error})


def serve(checkpoint: str | None, cfg: ServeConfig, device: str | None = None,
          precision: str = DEFAULT_PRECISION, max_len: int | None = None) -> None:
    import uvicorn

    from .summarizer import Summarizer

    summarizer = Summarizer.from_pretrained(checkpoint, device=device, precision=precision,
                                            max_len=max_len)
    print(f"checkpoint {summarizer.checkpoint}; {summarizer.precision.describe()}",
          file=sys.stderr)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the service is reachable beyond this machine", cfg.host)
    uvicorn.run(create_app(summarizer, cfg), host=cfg.host, port=cfg.port, log_level="info",
                timeout_graceful_shutdown=int(cfg.timeout_s), http=http_protocol(cfg))


def http_protocol(cfg: ServeConfig):
    """uvicorn's h11 protocol with a bound on the time a client takes to send a request's
    headers: a connection that sends none, or trickles them, is closed after
    `cfg.header_timeout_s` (uvicorn resets its keep-alive timer on every byte and has no such
    bound). The bound starts when the connection opens and again when a response completes."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedHeaders(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self):
            self._disarm()
            self._header_timer = self.loop.call_later(cfg.header_timeout_s, self._too_slow)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self):
            self._header_timer = None
            if not self.transport.is_closing():
                log.info("closed a connection whose headers took over %g s",
                         cfg.header_timeout_s)
                self.transport.close()

        def handle_events(self):
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers are in
                self._disarm()

        def on_response_complete(self):
            self._arm()  # before: a pipelined request handled inside disarms it
            super().on_response_complete()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

    return BoundedHeaders
