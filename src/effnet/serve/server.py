"""The HTTP inference server: FastAPI + uvicorn, with dynamic batching of concurrent requests.

Why FastAPI + uvicorn and not LitServe: the engines here are in-process callables
(:func:`effnet.deploy.build_engine`) whose fastest settings (onnxruntime or OpenVINO with
every core in one call) want one engine per machine, fed in batches. LitServe runs the model
in worker processes behind queues, one more hop per request; on 2 cores that hop is a large
part of a 5 ms budget. Here the event loop decodes uploads in a thread pool, queues the
tensors and one engine thread runs them as a batch (:class:`DynamicBatcher`; a request alone
on an idle server is decoded and run in one call on that thread); FastAPI gives
the routing, multipart parsing (python-multipart) and JSON, uvicorn the HTTP/1.1 server,
prometheus_client the ``/metrics`` text format.

Endpoints (all JSON unless said):

- ``POST /predict?topk=5``: one image, as a multipart form (one file field) or the raw body
  (``Content-Type: image/*``, ``application/octet-stream`` or none; a file part with no type,
  as Python requests sends it, is decoded too) ->
  ``{"topk": [{"class_index", "label", "probability"}], "model", "engine", "ms"}``.
- ``POST /predict/batch?topk=5``: several images in one multipart form ->
  ``{"results": [{"file", "topk"} or {"file", "error"}], "model", "engine", "ms"}``; an
  image that cannot be decoded or is not of an image type gets an ``error`` entry (counted
  in ``effnet_image_errors``), the others their predictions.
- ``GET /health`` (and ``HEAD``), ``GET /metadata`` (model, classes, preprocessing, engine, limits),
  ``GET /metrics`` (Prometheus text: requests, errors, latency and batch-size histograms).
- with ``app=True`` (``effnet app``): ``GET /`` the web page and ``POST /explain`` (top-k
  and the class activation map overlay of the top-1 class as a PNG data URL).

Bad uploads get a 4xx JSON ``{"error": "...", "status": N}`` naming the problem: 413 a body
over ``max_upload_mb`` (checked from Content-Length and again while reading, so a lying or
missing header, or a chunked form, changes nothing), 415 a content type that is not an image, 422 bytes that do
not decode (not an image, truncated, a decompression bomb over
:data:`effnet.data.MAX_IMAGE_PIXELS`, an unrenderable mode), 400 a malformed request (no
file, bad ``topk``). None of them reaches the engine or stops the server.
"""


import asyncio
import errno
import functools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .._validate import check_float, check_int
from ..data import MAX_IMAGE_PIXELS, ImageDecodeError, decode_image
from .classifier import Classifier

__all__ = ["ServeConfig", "Classifier", "DynamicBatcher", "create_app", "bind", "serve", "ServeDependencyError"]

MB = 1 << 20

MAX_BATCH = 1024
"""Largest ``--max-batch``: the server warms the engine up at that batch when it starts
(a batch of 1024 224-px images is 616 MB of float32 input alone)."""


class ServeDependencyError(ImportError):
    """FastAPI, uvicorn, python-multipart or prometheus_client is missing (``pip install 'effnet[serve]'``)."""


def _require():
    import importlib

    try:
        for module in ("fastapi", "multipart", "prometheus_client", "uvicorn"):   # multipart: python-multipart
            importlib.import_module(module)
    except ImportError as e:
        raise ServeDependencyError(f"effnet serve needs FastAPI, uvicorn, python-multipart and prometheus_client "
                                   f"({e.name} is missing): pip install 'effnet[serve]'") from e


@dataclass(frozen=True)
class ServeConfig:
    """Limits and batching of the server.

    Attributes:
        max_batch: most images per engine call (dynamic batching), 1 to :data:`MAX_BATCH`.
        batch_timeout_ms: longest a queued image waits for others to join its batch, in
            milliseconds. The batcher waits only while more requests are being received or
            decoded; a lone request runs at once.
        max_upload_mb: largest request body, in MiB (one image for ``/predict``, all of them
            for ``/predict/batch``).
        max_files: most images in one ``/predict/batch`` request.
        max_image_mpixels: largest image an upload may declare, in millions of pixels
            (refused with 422 from its header, before decoding); at most
            :data:`effnet.data.MAX_IMAGE_PIXELS` (89.5, Pillow's bomb limit), the default.
            Decoding costs about 10 ms per million pixels on this machine's cores, so a
            server facing the public may want photos' sizes only (e.g. 24).
        decode_threads: threads decoding uploads (Pillow releases the GIL while decoding).
    """

    max_batch: int = 16
    batch_timeout_ms: float = 5.0
    max_upload_mb: float = 20.0
    max_files: int = 64
    max_image_mpixels: float = MAX_IMAGE_PIXELS / 1e6
    decode_threads: int = 2

    def __post_init__(self) -> None:
        """Raises: TypeError, ValueError: a field of the wrong type or out of range (named)."""
        check_int("max_batch", self.max_batch, minimum=1, maximum=MAX_BATCH)
        for name in ("max_files", "decode_threads"):
            check_int(name, getattr(self, name), minimum=1)
        check_float("batch_timeout_ms", self.batch_timeout_ms, low=0)
        check_float("max_upload_mb", self.max_upload_mb, low=0, low_open=True)
        check_float("max_image_mpixels", self.max_image_mpixels, low=0, high=MAX_IMAGE_PIXELS / 1e6, low_open=True)

    @property
    def max_pixels(self) -> int:
        """:attr:`max_image_mpixels` in pixels."""
        return round(self.max_image_mpixels * 1e6)


class _Item:
    __slots__ = ("x", "future")

    def __init__(self, x: torch.Tensor, future: asyncio.Future) -> None:
        self.x, self.future = x, future


class DynamicBatcher:
    """Groups images of concurrent requests into one engine call.

    Requests announce themselves when they arrive (:meth:`expect`) and submit their
    preprocessed image when it is decoded (:meth:`submit`). One task takes the oldest queued
    image and adds every other queued one, up to ``max_batch``; while requests announced
    earlier are still being received or decoded, it waits for them up to ``timeout_s`` from
    the first image's turn. A lone request never waits, so batching costs nothing at
    concurrency 1, and under load batches fill while the engine works. The engine runs in its
    own single thread (engines are not assumed thread-safe), outside the event loop.

    Args:
        run: ``run(x: Tensor (N, 3, H, W) float32) -> (N, classes)`` array, e.g. a :class:`Classifier`.
        max_batch: most images per call.
        timeout_s: longest wait for announced requests, seconds.
        on_batch: called with each batch's size and engine seconds (metrics).
    """

    def __init__(self, run: Callable, max_batch: int, timeout_s: float,
                 on_batch: Optional[Callable[[int, float], None]] = None) -> None:
        self.run, self.max_batch, self.timeout_s, self.on_batch = run, max_batch, timeout_s, on_batch
        self._queue: deque = deque()
        self._arrived: Optional[asyncio.Event] = None
        self._incoming = 0
        self._busy = 0                     # engine-thread jobs submitted and not finished on that thread
        self._assembling = False           # a batch has its first image and waits for others
        self._task: Optional[asyncio.Task] = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="effnet-engine")

    def expect(self) -> None:
        """A request has arrived and will :meth:`submit` (or :meth:`cancel`) soon."""
        self._incoming += 1

    def alone(self) -> bool:
        """Whether the one announced request is all there is: no other announced, none
        queued, no batch being assembled, nothing on the engine thread (a job counts until
        the thread finishes it, even if its request was cancelled). Then :meth:`run_alone`
        may take it."""
        return self._incoming <= 1 and not self._queue and not self._assembling and not self._busy

    def _engine_job(self, fn: Callable, *args) -> asyncio.Future:
        """Submit ``fn(*args)`` to the engine thread now; busy (:meth:`alone`) until it finishes there."""
        loop = asyncio.get_running_loop()
        self._busy += 1

        def finished(_):
            try:
                loop.call_soon_threadsafe(self._job_done)
            except RuntimeError:                       # the loop is closed: the server is gone
                pass

        job = self._executor.submit(fn, *args)
        job.add_done_callback(finished)
        return asyncio.wrap_future(job, loop=loop)

    def _job_done(self) -> None:
        self._busy -= 1

    async def run_alone(self, prepare: Callable[[], torch.Tensor]) -> np.ndarray:
        """Run an announced request that is :meth:`alone` as a batch of one: ``prepare()``
        (decode, -> (3, H, W)) and the engine in one call on the engine's thread, saving
        the hand-offs between the decode pool, the event loop and the engine thread. Requests
        arriving meanwhile are decoded and queued as usual and batched after it.

        Returns:
            The image's (classes,) row.

        Raises:
            Whatever ``prepare`` raises (e.g. :class:`~effnet.data.ImageDecodeError`); the
            request is no longer announced either way.
        """
        def work():
            x = prepare()[None]
            t0 = time.perf_counter()
            return self.run(x), time.perf_counter() - t0

        job = self._engine_job(work)
        try:
            out, seconds = await job
        finally:
            self.cancel()                              # no longer announced: it will not submit
        if self.on_batch is not None:
            self.on_batch(1, seconds)
        return out[0]

    def cancel(self) -> None:
        """An announced request will not submit (bad upload)."""
        self._incoming -= 1
        self._wake()

    async def submit(self, x: torch.Tensor) -> np.ndarray:
        """Queue one preprocessed image (3, H, W) of an announced request; its (classes,) row."""
        future = asyncio.get_running_loop().create_future()
        self._incoming -= 1
        self._queue.append(_Item(x, future))
        self._wake()
        return await future

    async def on_engine_thread(self, fn: Callable, *args):
        """``fn(*args)`` on the engine's thread, between batches (e.g. the app's eager CAM)."""
        return await self._engine_job(fn, *args)

    def _wake(self) -> None:
        if self._arrived is not None:
            self._arrived.set()

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the batching task; queued requests get an error."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=False)

    async def _next_batch(self) -> list:
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._queue.popleft()]
        self._assembling = True                        # cleared by _loop once the batch is on the engine
        deadline = loop.time() + self.timeout_s
        while len(batch) < self.max_batch:
            if self._queue:
                batch.append(self._queue.popleft())
                continue
            remaining = deadline - loop.time()
            if self._incoming <= 0 or remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        while True:
            try:
                batch = await self._next_batch()
                x = torch.stack([item.x for item in batch])
                t0 = time.perf_counter()
                job = self._engine_job(self.run, x)    # busy from here, so never idle-looking in between
            finally:
                self._assembling = False
            try:
                out = await job
            except Exception as e:                    # an engine failure fails this batch, not the server
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
            for item, row in zip(batch, out):
                if not item.future.done():
                    item.future.set_result(row)


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before the app reads it all.

    Content-Length is checked first; the body is counted again as it streams, so a missing or
    lying header cannot get more than ``limit`` bytes into memory.
    """

    class TooLarge(Exception):
        pass

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send, int(declared))
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self.TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except self.TooLarge:
            if not started:
                await self._reject(send, seen)

    async def _reject(self, send, size: int) -> None:
        import json

        body = json.dumps({"error": f"request body is over the limit of {self.limit / MB:g} MiB (got at least "
                                    f"{size:,} bytes); send a smaller image or start the server with a larger "
                                    f"--max-upload-mb", "status": 413}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _Measure:
    """ASGI middleware: count each HTTP request by endpoint and status code, time it.

    A plain ASGI wrapper (not Starlette's ``BaseHTTPMiddleware``, whose extra task and
    streams cost ~0.5 ms a request): the status is read from ``http.response.start``; a
    request whose app raised before answering counts as 500.
    """

    def __init__(self, app, metrics: dict) -> None:
        self.app, self.m = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, code = time.perf_counter(), 500
        endpoint = scope["path"] if scope["path"] in _PAGE_ENDPOINTS else "other"

        async def recording_send(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.m["requests"].labels(endpoint, str(code)).inc()
            if code >= 400:
                self.m["errors"].labels(endpoint, str(code)).inc()
            self.m["latency"].labels(endpoint).observe(time.perf_counter() - t0)


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    latency_buckets = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5, 10)
    return dict(
        registry=registry,
        requests=Counter("effnet_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"],
                         registry=registry),
        errors=Counter("effnet_errors", "requests answered with a 4xx or 5xx, by endpoint and code",
                       ["endpoint", "code"], registry=registry),
        latency=Histogram("effnet_request_latency_seconds", "request latency in the server, seconds", ["endpoint"],
                          buckets=latency_buckets, registry=registry),
        batch=Histogram("effnet_batch_size", "images per engine call", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                        registry=registry),
        engine=Histogram("effnet_engine_seconds", "engine call time per batch, seconds", buckets=latency_buckets,
                         registry=registry),
        images=Counter("effnet_images", "images classified", registry=registry),
        image_errors=Counter("effnet_image_errors", "images refused inside a /predict/batch answer (the request "
                             "succeeds, the image gets an error entry), by reason", ["reason"], registry=registry),
    )


_PAGE_ENDPOINTS = {"/", "/predict", "/predict/batch", "/explain", "/health", "/metadata", "/metrics"}
_IMAGE_TYPES = ("image/", "application/octet-stream")


def create_app(classifier: Classifier, config: ServeConfig = ServeConfig(), app: bool = False):
    """The FastAPI application serving ``classifier`` (see the module docstring for endpoints).

    Args:
        classifier: the model and engine (:class:`Classifier`).
        config: batching and limits (:class:`ServeConfig`).
        app: also serve the web page at ``/`` and ``POST /explain`` (``effnet app``).

    Returns:
        A ``fastapi.FastAPI`` (an ASGI app: run it with uvicorn, or :func:`serve`).

    Raises:
        ServeDependencyError: FastAPI, uvicorn, python-multipart or prometheus_client missing.
    """
    _require()
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException as StarletteHTTPException

    m = _metrics()

    def on_batch(n: int, seconds: float) -> None:
        m["batch"].observe(n)
        m["engine"].observe(seconds)
        m["images"].inc(n)

    batcher = DynamicBatcher(classifier, config.max_batch, config.batch_timeout_ms / 1000.0, on_batch)
    decode_pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="effnet-decode")

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decode_pool.shutdown(wait=False)

    api = FastAPI(title="effnet", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    limit = int(config.max_upload_mb * MB)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc):
        return error(exc.status_code, str(exc.detail))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc):
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return error(400, "bad request: " + "; ".join(parts))

    api.add_middleware(_BodyLimit, limit=limit)     # inside the measuring middleware: its 413s are counted

    api.add_middleware(_Measure, metrics=m)         # outermost of ours: counts every answer, 413s included

    def check_topk(topk: int) -> int:
        if not 1 <= topk <= len(classifier.names):
            raise HTTPException(400, f"topk must be between 1 and the model's {len(classifier.names)} classes, "
                                     f"got {topk}")
        return topk

    def type_error(content_type: Optional[str], what: str) -> Optional[str]:
        """Why ``content_type`` is not an upload to decode, or None. A missing type (Python
        requests' file parts, a bare body) leaves it to the decoder."""
        if not content_type or content_type.lower().startswith(_IMAGE_TYPES):
            return None
        return (f"{what} has content type {content_type!r}, not an image: send image/jpeg, image/png, ... or "
                f"application/octet-stream (or a multipart form with the image as a file field)")

    def check_type(content_type: Optional[str], what: str) -> None:
        problem = type_error(content_type, what)
        if problem:
            raise HTTPException(415, problem)

    async def read_uploads(request: Request, most: int) -> list:
        """[(filename, bytes, content type or None)] from a multipart form or a raw image body.

        Raises:
            HTTPException: 400 for a form that cannot be read or has no file, 415 for a raw
                body that is not an image type (a file part's type is checked by the caller).
        """
        ctype = request.headers.get("content-type", "")
        if ctype.lower().startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=most, max_fields=most + 8)
            except (HTTPException, _BodyLimit.TooLarge):         # the body limit answers 413
                raise
            except Exception as e:
                raise HTTPException(400, f"the multipart form could not be read ({e or type(e).__name__})") from e
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not files:
                raise HTTPException(400, "the multipart form has no file field: send the image as a file "
                                         "(e.g. curl -F file=@photo.jpg)")
            out = [(f.filename or "<upload>", await f.read(), f.content_type) for f in files]
            await form.close()
            return out
        check_type(ctype, "the request body")
        return [("<upload>", await request.body(), None)]

    async def read_one(request: Request) -> tuple:
        """(filename, bytes) of the one image of /predict or /explain; 400 for several, 415 for a non-image type."""
        uploads = await read_uploads(request, 1)
        if len(uploads) != 1:
            raise HTTPException(400, f"{request.url.path} takes one image, got {len(uploads)}; use /predict/batch")
        name, data, ctype = uploads[0]
        check_type(ctype, f"file {name!r}")
        return name, data

    preprocess = functools.partial(classifier.preprocess, max_pixels=config.max_pixels)   # bytes -> (3, H, W)

    async def decode(data: bytes, name: str) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(decode_pool, preprocess, data, name)

    def payload(t0: float, **fields) -> dict:
        return {**fields, "model": classifier.name, "engine": classifier.engine,
                "ms": round((time.perf_counter() - t0) * 1000.0, 3)}

    @api.post("/predict")
    async def predict(request: Request, topk: int = 5):
        t0 = time.perf_counter()
        check_topk(topk)
        name, data = await read_one(request)  # announced only once received: a stalled upload holds up no batch
        batcher.expect()
        announced = True                      # until run_alone or submit takes it over
        try:
            if batcher.alone():               # nothing else to do: decode (resize on 2 threads) + engine at once
                announced = False
                probs = await batcher.run_alone(functools.partial(preprocess, data, name, split=True))
            else:
                x = await decode(data, name)
                announced = False
                probs = await batcher.submit(x)
        except ImageDecodeError as e:
            raise HTTPException(422, str(e)) from e
        finally:
            if announced:
                batcher.cancel()
        return payload(t0, topk=classifier.topk(probs, topk))

    @api.post("/predict/batch")
    async def predict_batch(request: Request, topk: int = 5):
        t0 = time.perf_counter()
        check_topk(topk)
        uploads = await read_uploads(request, config.max_files)
        if len(uploads) > config.max_files:
            raise HTTPException(400, f"{len(uploads)} images in one request; the limit is {config.max_files}")
        refused = [type_error(ctype, f"file {name!r}") for name, _, ctype in uploads]
        for problem in refused:
            if problem:
                m["image_errors"].labels("content_type").inc()
            else:
                batcher.expect()

        async def one(name: str, data: bytes, problem: Optional[str]) -> dict:
            if problem:
                return {"file": name, "error": problem}
            try:
                x = await decode(data, name)
            except ImageDecodeError as e:
                batcher.cancel()
                m["image_errors"].labels("decode").inc()
                return {"file": name, "error": str(e)}
            except BaseException:
                batcher.cancel()
                raise
            return {"file": name, "topk": classifier.topk(await batcher.submit(x), topk)}

        results = await asyncio.gather(*(one(n, d, p) for (n, d, _), p in zip(uploads, refused)))
        return payload(t0, results=list(results))

    @api.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return {"status": "ok", "model": classifier.name, "engine": classifier.engine}

    @api.get("/metadata")
    async def metadata():
        return {**classifier.metadata(), "max_batch": config.max_batch, "batch_timeout_ms": config.batch_timeout_ms,
                "max_upload_mb": config.max_upload_mb, "max_files": config.max_files,
                "max_image_mpixels": config.max_image_mpixels}

    @api.get("/metrics")
    async def metrics():
        return Response(generate_latest(m["registry"]), media_type=CONTENT_TYPE_LATEST)

    if app:
        from .page import PAGE

        @api.get("/", response_class=HTMLResponse)
        async def page():
            return PAGE

        @api.post("/explain")
        async def explain(request: Request, topk: int = 5):
            t0 = time.perf_counter()
            check_topk(topk)
            name, data = await read_one(request)
            loop = asyncio.get_running_loop()
            try:
                image = await loop.run_in_executor(
                    decode_pool, lambda: decode_image(data, name, min_size=classifier.transform.decode_size,
                                                      max_pixels=config.max_pixels))
            except ImageDecodeError as e:
                raise HTTPException(422, str(e)) from e
            result = await batcher.on_engine_thread(classifier.explain, image, topk)
            return payload(t0, **result)

    return api


def bind(host: str = "127.0.0.1", port: int = 8000):
    """A TCP socket bound to ``host``:``port`` for :func:`serve`: bind before the model loads,
    so a taken port or a bad host is an error at once, not after a minute of loading.

    Returns:
        A bound ``socket.socket`` (not yet listening; uvicorn listens on it).

    Raises:
        OSError: the host does not resolve or is not this machine's, or the port is taken
            or needs privileges; the message names the address and what to change.
    """
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise OSError(f"cannot serve on --host {host!r}: it does not resolve ({e.strerror}); use an address of "
                      f"this machine such as 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn: restart while old sockets linger
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        hint = {errno.EADDRINUSE: "another process holds it: pick another --port or stop that process",
                errno.EACCES: "ports below 1024 need privileges: pick a --port of 1024 or more",
                errno.EADDRNOTAVAIL: "the host is not an address of this machine: use 127.0.0.1 or 0.0.0.0"}
        raise OSError(e.errno, f"cannot serve on {host}:{port}: {e.strerror}; "
                               f"{hint.get(e.errno, 'check --host and --port')}") from None
    return sock


def serve(classifier: Classifier, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig = ServeConfig(),
          app: bool = False, log_level: str = "warning", sock=None) -> None:
    """Run the server (:func:`create_app`) with uvicorn until interrupted (Ctrl-C, SIGTERM).

    One process: the engine uses every core in each call and the batcher needs all requests
    in one place. Binds ``host`` (default 127.0.0.1, this machine only; ``0.0.0.0`` for all
    interfaces). With an engine that has its own thread pool (onnxruntime, OpenVINO, ...;
    not :data:`effnet.deploy.TORCH_ENGINES`) and no web page (``app=False``), PyTorch is set
    to one thread: the server's own torch work is then small (stacking a batch, softmax),
    and PyTorch's OpenMP workers, which spin after each parallel op, otherwise took a core
    from the engine's threads (Lite0 onnx at batch 1 on 2 cores: ~6.1 ms in process,
    8.5-9.3 ms inside the server before). The page's class activation maps run the eager
    model, so ``app=True`` keeps PyTorch's threads.

    Args:
        sock: a socket from :func:`bind` (then ``host``/``port`` only name it); default:
            bound here.

    Raises:
        ServeDependencyError: the serve extra is missing.
        OSError: ``host``/``port`` cannot be bound (:func:`bind`).
    """
    _require()
    import uvicorn

    from ..deploy import TORCH_ENGINES

    sock = sock if sock is not None else bind(host, port)
    if classifier.engine not in TORCH_ENGINES and not app:
        torch.set_num_threads(1)
    server = uvicorn.Server(uvicorn.Config(create_app(classifier, config, app=app), host=host, port=port,
                                           log_level=log_level, access_log=False, timeout_graceful_shutdown=5))
    with sock:
        server.run(sockets=[sock])


def warm_up(classifier: Classifier, sizes: Sequence[int]) -> None:
    """Run the engine once per batch size so the first requests do not pay compilation (OpenVINO)."""
    side = classifier.preprocess_config.input_size
    for n in sorted(set(sizes)):
        classifier(torch.zeros(n, 3, side, side))
