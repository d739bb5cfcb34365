"""`attnsum serve`: an HTTP service for extractive summaries (FastAPI on uvicorn).

    POST /summarize     {"text": "..."} or {"texts": ["...", ...]}, optional "k" (default 3) and
                        "trigram_blocking" (default true)
                        -> {"summaries": [{"sentences": [...], "indices": [...], "scores": [...]}]}
    GET  /health        alive: {"status": "ok", "model": ..., "weights_sha256": ..., ...}
    GET  /ready         200 once the model is loaded and warmed by one call, 503 before
    GET  /metrics       Prometheus text format: requests by status, latency, queue, batches
    GET  /openapi.json  the OpenAPI schema, made from the request and response models below;
                        /docs shows it as interactive documentation (Swagger UI; its script and
                        style come from a CDN, so the page needs a browser that reaches one)

Binds 127.0.0.1 by default. Concurrent requests are batched together (up to `max_batch`
documents, waiting at most `max_wait_ms` for company). Limits, each answered with a JSON error
and the service staying up: body size (413), documents per request (413), characters per
document (413), invalid JSON or fields (400), documents that cannot be summarized (422), more
than `max_queue` documents waiting (429, with Retry-After), unknown paths (404) and methods
(405); with an API token, /summarize needs ``Authorization: Bearer TOKEN`` (401 otherwise);
with CORS origins, browsers on those origins may call it (preflights answered). `timeout_s`
bounds a request's whole work (reading, preparing, waiting for the model, scoring): past it the
answer is 504 and the work not yet done is dropped (preparation stops at the next document; a
batch leaves out requests that gave up). Documents are prepared on `prep_threads` threads, the
model runs on one. Ctrl-C or SIGTERM shut it down gracefully: requests in flight are answered
first. Running it (uvicorn, worker processes, the bounded-headers protocol): server.py.
"""

import asyncio
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .extras import need
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
    max_queue: int = 256  # documents accepted and not yet answered, per process (429 beyond)
    api_token: str | None = None  # required as a Bearer token on /summarize when set
    cors_origins: tuple[str, ...] = field(default_factory=tuple)  # browser origins allowed


TOKEN_ENV = "ATTNSUM_API_TOKEN"  # the API token, where --api-token is not given
WARMUP_TEXT = ("The service loads its model and summarizes this text once before it is ready. "
               "A first call pays for allocations and kernel choices that later calls reuse. "
               "Readiness probes wait for it, so no user request pays that cost.")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Batcher:
    """Collects concurrent requests into model batches; the model runs on one worker thread."""

    def __init__(self, summarizer: "Summarizer", cfg: ServeConfig, on_batch=None):
        self.summarizer, self.cfg, self.on_batch = summarizer, cfg, on_batch
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
                if self.on_batch is not None:
                    self.on_batch(len(docs))
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


def _models():
    """The request and response models: what /openapi.json is made from."""
    from pydantic import BaseModel, Field

    class SummarizeRequest(BaseModel):
        text: str | None = Field(None, description="one document (or give texts)")
        texts: list[str] | None = Field(None, description="several documents (or give text)")
        k: int = Field(3, ge=1, le=100, description="sentences per summary")
        trigram_blocking: bool = Field(True, description="pass over a sentence that repeats a "
                                                         "trigram of one already chosen")

    class Summary(BaseModel):
        sentences: list[str] = Field(description="the chosen sentences, in document order")
        indices: list[int] = Field(description="their indices among the document's sentences")
        scores: list[float] = Field(description="the model's probability for each")

    class SummarizeResponse(BaseModel):
        summaries: list[Summary] = Field(description="one per document, in request order")

    class Error(BaseModel):
        error: str

    class Health(BaseModel):
        status: str
        model: str | None = Field(description="the checkpoint folder's name")
        weights_sha256: str = Field(description="first 16 hex digits of the weights' SHA-256")
        preset: str
        plan: str
        max_len: int
        device: str
        precision: str

    return SummarizeRequest, SummarizeResponse, Error, Health


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("attnsum_requests", "summarize requests answered, by status",
                                ["status"], registry=self.registry)
        self.latency = Histogram("attnsum_request_seconds", "summarize requests, reading to "
                                 "answer", registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.queue = Gauge("attnsum_queue_documents", "documents accepted and not yet answered",
                           registry=self.registry)
        self.documents = Counter("attnsum_documents", "documents summarized",
                                 registry=self.registry)
        self.batches = Histogram("attnsum_batch_documents", "documents per model call",
                                 registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def create_app(summarizer: "Summarizer", cfg: ServeConfig):
    # (no `from __future__ import annotations` in this module: FastAPI reads the endpoints'
    # `request: Request` annotations, and Request is imported here, not at module level)
    from contextlib import asynccontextmanager

    need("serve", "the service")
    from fastapi import FastAPI, Request
    from starlette.exceptions import HTTPException
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import JSONResponse, Response

    from . import __version__
    from .checkpoints import weights_digest
    from .errors import InputError

    SummarizeRequest, SummarizeResponse, Error, Health = _models()
    metrics = _Metrics()
    batcher = Batcher(summarizer, cfg, on_batch=metrics.batches.observe)
    prep_pool = ThreadPoolExecutor(max_workers=cfg.prep_threads, thread_name_prefix="attnsum-prep")
    ready = threading.Event()
    pending = [0]  # documents accepted and not yet answered (the event loop's thread only)

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
        if pending[0] + len(texts) > cfg.max_queue:
            raise HTTPError(429, f"{pending[0]} documents are waiting; the limit is "
                            f"{cfg.max_queue}", {"Retry-After": "1"})
        pending[0] += len(texts)
        metrics.queue.set(pending[0])
        try:
            loop = asyncio.get_running_loop()
            try:
                prepared = await loop.run_in_executor(prep_pool, summarizer.prepare, texts,
                                                      cancelled)
            except InputError as e:
                raise HTTPError(422, str(e)) from None
            summaries = await batcher.submit(prepared, k, tri)
            metrics.documents.inc(len(texts))
            return summaries
        finally:
            pending[0] -= len(texts)
            metrics.queue.set(pending[0])

    def authorized(request) -> bool:
        if cfg.api_token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {cfg.api_token}".encode())

    async def summarize(request: Request):
        cancelled = threading.Event()
        t0 = time.perf_counter()
        try:
            try:
                if not authorized(request):
                    raise HTTPError(401, "this service needs Authorization: Bearer <token>",
                                    {"WWW-Authenticate": "Bearer"})
                summaries = await asyncio.wait_for(work(request, cancelled), cfg.timeout_s)
            except TimeoutError:
                cancelled.set()  # stops its preparation at the next document
                raise HTTPError(504, f"the request took longer than {cfg.timeout_s} s") from None
            answer = JSONResponse({"summaries": [s.to_dict() for s in summaries]})
        except HTTPError as e:
            answer = JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)
        except Exception:
            log.exception("request failed")
            answer = JSONResponse({"error": "internal error"}, status_code=500)
        metrics.requests.labels(str(answer.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - t0)
        return answer

    model_id = {"model": summarizer.checkpoint.name if summarizer.checkpoint else None,
                "weights_sha256": weights_digest(summarizer.checkpoint)}

    async def health(request: Request):  # names the model, not where it lies on this machine
        mcfg = summarizer.model.cfg
        return JSONResponse({"status": "ok", **model_id,
                             "preset": mcfg.preset, "plan": str(mcfg.plan),
                             "max_len": summarizer.cfg.max_len,
                             "device": str(summarizer.device),
                             "precision": summarizer.precision.name})

    async def ready_probe(request: Request):
        if ready.is_set():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "warming up"}, status_code=503)

    async def metrics_page(request: Request):
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def http_error(request, exc: HTTPException):  # 404, 405 and the like, as JSON
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def warm_up():
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(batcher.pool, summarizer.summarize, WARMUP_TEXT)
            ready.set()
        except Exception:
            log.exception("the warm-up call failed: /ready stays 503")

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        warming = asyncio.get_running_loop().create_task(warm_up())
        yield
        warming.cancel()
        await batcher.stop()
        prep_pool.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="attnsum", version=__version__, lifespan=lifespan, redoc_url=None,
                  description="Extractive summaries from a BERTSum-style model with "
                              "human-guided attention patterns.",
                  exception_handlers={HTTPException: http_error})
    errors = {code: {"model": Error, "description": what} for code, what in (
        (400, "invalid JSON or fields"), (401, "missing or wrong API token"),
        (413, "a limit passed"), (422, "a document that cannot be summarized"),
        (429, "too many documents waiting; see Retry-After"), (504, "past the deadline"))}
    app.add_api_route("/summarize", summarize, methods=["POST"], response_model=SummarizeResponse,
                      responses=errors, summary="Summarize one or more documents",
                      openapi_extra={"requestBody": {"required": True, "content": {
                          "application/json": {"schema": SummarizeRequest.model_json_schema()}}}})
    app.add_api_route("/health", health, methods=["GET"], response_model=Health,
                      summary="Liveness, and which model this is")
    app.add_api_route("/ready", ready_probe, methods=["GET"], summary="Readiness: 200 once warmed",
                      responses={503: {"description": "still warming up"}})
    app.add_api_route("/metrics", metrics_page, methods=["GET"], include_in_schema=False)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization"])
    return app
