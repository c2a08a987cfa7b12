"""The studio's web server: starlette on uvicorn, in a thread of its own.

``create_app(worker, access)`` serves the page (``static/``: plain HTML, JS and CSS) and one
socket, ``/ws``. Each socket's messages are checked by ``protocol.parse`` here, in the
request handler, and only queued for the worker (``StudioWorker.submit``); the worker's state
messages reach a socket through a one-slot mailbox (the newest state wins), so a slow page
skips frames instead of holding anything up, and every page sees the same session.
``StudioServer`` binds the socket first (port 0: a free one), then runs uvicorn in a thread:
the CLI and the notebook both use it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.resources
import socket
import threading
import time
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from clipclop_jax.studio import access as access_rules
from clipclop_jax.studio import protocol
from clipclop_jax.studio.worker import StudioWorker

STATIC = importlib.resources.files("clipclop_jax.studio") / "static"
MAX_FRAME_BYTES = 1 << 20  # larger socket frames close the socket (uvicorn's ws_max_size)
RATE = 50.0  # messages per second a socket may send on average
BURST = 200  # and at once
MAX_REPLIES = 64  # replies waiting for a slow page; older ones are dropped


class _Mailbox:
    """A socket's pending output: the newest state and a bounded list of replies; filled
    from any thread, emptied by the socket's sender task."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self.ready = asyncio.Event()
        self.state: str | None = None
        self.replies: collections.deque[str] = collections.deque(maxlen=MAX_REPLIES)

    def put_state(self, text: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
            self._loop.call_soon_threadsafe(self._set_state, text)

    def put_reply(self, text: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
            self._loop.call_soon_threadsafe(self._add_reply, text)

    def _set_state(self, text: str) -> None:
        self.state = text
        self.ready.set()

    def _add_reply(self, text: str) -> None:
        self.replies.append(text)
        self.ready.set()


class _Bucket:
    """A token bucket: ``take()`` is False when a socket sends faster than ``RATE``."""

    def __init__(self):
        self.tokens, self.when = float(BURST), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.when) * RATE)
        self.when = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _AccessMiddleware:
    """Every HTTP request and socket passes ``access.allowed`` or gets 403."""

    def __init__(self, app, access: access_rules.Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if scope["type"] == "websocket":
                headers.setdefault("upgrade", "websocket")
            ok, why = access_rules.allowed(
                self.access, headers, scope.get("query_string", b"").decode("latin-1")
            )
            if not ok:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})
                    return
                await PlainTextResponse(f"forbidden: {why}", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(worker: StudioWorker, access: access_rules.Access) -> Starlette:
    """The studio's ASGI app for a started ``worker``."""

    async def index(request: Request) -> Response:
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        response = HTMLResponse(page, headers={"Cache-Control": "no-store"})
        if access.token is not None:
            # Later requests of the page (scripts, styles) carry the token as a cookie.
            response.set_cookie(access_rules.COOKIE, access.token, httponly=True, samesite="strict")
        return response

    async def socket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        mailbox = _Mailbox(asyncio.get_running_loop())
        key = worker.subscribe(mailbox.put_state)
        sender = asyncio.create_task(_send_loop(websocket, mailbox))
        bucket = _Bucket()
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    text = message.get("bytes")
                if not bucket.take():
                    mailbox.put_reply(protocol.error("too many messages: slow down."))
                    continue
                try:
                    command = protocol.parse(text, worker.limits)
                    worker.submit(command, mailbox.put_reply)
                except protocol.ProtocolError as problem:
                    mailbox.put_reply(protocol.error(str(problem), _id_of(text)))
        except WebSocketDisconnect:
            pass
        finally:
            worker.unsubscribe(key)
            sender.cancel()

    routes = [
        Route("/", index),
        WebSocketRoute("/ws", socket_endpoint),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_AccessMiddleware, access=access)
    return app


async def _send_loop(websocket: WebSocket, mailbox: _Mailbox) -> None:
    with contextlib.suppress(Exception):  # the page went away: the receiver ends too
        while True:
            await mailbox.ready.wait()
            mailbox.ready.clear()
            while mailbox.replies:
                await websocket.send_text(mailbox.replies.popleft())
            if mailbox.state is not None:
                state, mailbox.state = mailbox.state, None
                await websocket.send_text(state)


def _id_of(text) -> int | str | None:
    """The id of a refused message, if it has a good one (so the page knows which)."""
    import json

    try:
        ident = json.loads(text, parse_constant=float).get("id")
    except Exception:
        return None
    return ident if protocol._good_id(ident) and ident is not None else None


class StudioServer:
    """A studio served from a background thread.

    Args:
      worker: a started ``StudioWorker``.
      host, port: where to listen (port 0: a free one). Not a loopback host: a token.
      token: the token to require (default: a random one where one is needed).
      check_origin: check Host and Origin (off behind a proxy that rewrites them, Colab's).
    """

    def __init__(
        self,
        worker: StudioWorker,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        check_origin: bool = True,
    ):
        self.worker = worker
        self.host = host
        self.access = access_rules.access_for(host, token=token, check_origin=check_origin)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(worker, self.access),
            log_level="warning",
            ws_max_size=MAX_FRAME_BYTES,
            ws_ping_interval=None,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, name="clipclop-studio-http", daemon=True
        )

    @property
    def url(self) -> str:
        """The page's address (with the token, where one is needed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?{urlencode({'token': self.access.token})}" if self.access.token else ""
        return f"http://{host}:{self.port}/{query}"

    def start(self, timeout: float = 30) -> StudioServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the studio server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def stop(self, *, worker: bool = True, timeout: float = 60) -> None:
        """Stops serving, then (``worker``) the worker, which saves the session."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._socket.close()
        if worker:
            self.worker.stop(timeout)
