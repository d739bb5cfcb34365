"""Running `attnsum serve`'s app (serve.py) on uvicorn: one process, or `--workers` processes
sharing the port, each with its own model; every connection under a bound on the time its
request headers take (`http_protocol`).
"""

import json
import logging
import os
import sys

from .extras import need
from .precision import DEFAULT_PRECISION
from .serve import ServeConfig, create_app

log = logging.getLogger("attnsum.serve")


WORKER_ENV = "ATTNSUM_SERVE_WORKER"  # what each `--workers` process builds its app from (JSON)


def serve(checkpoint: str | None, cfg: ServeConfig, device: str | None = None,
          precision: str = DEFAULT_PRECISION, max_len: int | None = None,
          workers: int = 1) -> None:
    """Run the service; with `workers` > 1, that many processes share the port (uvicorn's
    supervisor), each with its own model and batcher, built by `worker_app`."""
    need("serve", "attnsum serve")
    import uvicorn

    from .summarizer import Summarizer

    summarizer = Summarizer.from_pretrained(checkpoint, device=device, precision=precision,
                                            max_len=max_len)
    print(f"checkpoint {summarizer.checkpoint}; {summarizer.precision.describe()}"
          + (f"; {workers} worker processes" if workers > 1 else ""), file=sys.stderr)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s: the service is reachable beyond this machine", cfg.host)
    common = dict(host=cfg.host, port=cfg.port, log_level="info",
                  timeout_graceful_shutdown=int(cfg.timeout_s))
    if workers == 1:
        uvicorn.run(create_app(summarizer, cfg), http=http_protocol(cfg), **common)
        return
    # the workers load what this process checked (the checkpoint it resolved), then it lets go
    spec = {"checkpoint": str(summarizer.checkpoint), "device": device, "precision": precision,
            "max_len": max_len, "cfg": {**cfg.__dict__, "cors_origins": list(cfg.cors_origins)}}
    del summarizer
    os.environ[WORKER_ENV] = json.dumps(spec)  # spawned workers inherit the environment
    uvicorn.run("attnsum.server:worker_app", factory=True, workers=workers,
                http="attnsum.server:WorkerProtocol", **common)


def _worker_spec() -> tuple[dict, ServeConfig]:
    spec = json.loads(os.environ[WORKER_ENV])
    return spec, ServeConfig(**{**spec["cfg"], "cors_origins": tuple(spec["cfg"]["cors_origins"])})


def worker_app():
    """The app of one `--workers` process (uvicorn imports this factory by name)."""
    from .summarizer import Summarizer

    spec, cfg = _worker_spec()
    summarizer = Summarizer.from_pretrained(spec["checkpoint"], device=spec["device"],
                                            precision=spec["precision"], max_len=spec["max_len"])
    return create_app(summarizer, cfg)


def __getattr__(name):  # `WorkerProtocol`: the bounded-headers protocol of a worker, by name
    if name == "WorkerProtocol":
        return http_protocol(_worker_spec()[1])
    raise AttributeError(name)


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
