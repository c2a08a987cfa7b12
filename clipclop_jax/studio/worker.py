"""``StudioWorker``: the thread that owns a studio ``Session`` and runs it.

Only this thread touches the session (it is not thread-safe): it opens it, runs chunks while
playing, and between chunks makes the commands the server queued (``submit``; a full queue
refuses more, so a flood costs the run nothing). After every chunk and edit it renders the
shown member once and publishes one state message (``state_message``: step, losses, the frame
as PNG, outlines, hit map, masks) as text to every subscriber; a subscriber only stores it, so
a slow or closed page never stalls the run. With no subscriber nothing is rendered, so a run
nobody watches pays nothing.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import queue
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from clipclop_jax.studio import protocol
from clipclop_jax.studio.session import Session

MAX_QUEUE = 256  # commands waiting for the end of a chunk
PLOT_POINTS = 400  # loss history points in a state message
# While playing, state messages (render, PNG, hit map) may take this share of the worker's
# time; the rest steps. The page's decoding and drawing of each one costs about as much
# again on the same CPU, so the budget is half the 5 % an idle open page may cost
# (benchmarks/studio.py). After an edit one is sent at once whatever it costs.
FRAME_BUDGET = 0.02
IDLE_WAIT = 0.25  # seconds a paused worker waits for a command before looking again

Reply = Callable[[str], None]


class StudioWorker:
    """Runs a session in its own thread (see the module docstring).

    Args:
      open_session: makes the ``Session`` (in the worker's thread).
      playing: run chunks from the start.
    """

    def __init__(self, open_session: Callable[[], Session], *, playing: bool = True):
        self._open_session = open_session
        self._commands: queue.Queue = queue.Queue(MAX_QUEUE)
        self._subscribers: dict[int, Callable[[str], None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="clipclop-studio", daemon=True)
        self.playing = playing
        self.member: int | None = None  # shown member; None: the best
        self.limits: protocol.Limits | None = None
        self.config = None
        self.out_dir: str | None = None
        self.latest: str | None = None  # the newest state message
        self.version = 0
        self.error: BaseException | None = None
        self.steps_per_second = 0.0
        self.publish_seconds = 0.0  # spent making state messages, all told (benchmarks)
        self._stop_at: int | None = None
        self._dirty = True  # steps since the last state message
        self._urgent = True  # a command or a new page since then: publish at once
        self._last_publish = 0.0
        self._publish_cost = 0.0  # seconds one state message with a new picture takes (smoothed)
        self._pictures: dict = {}  # state_message's last picture, reused while still true

    # -- the server's side ---------------------------------------------------------------

    def start(self, timeout: float | None = None) -> StudioWorker:
        """Starts the thread and waits for the session to open.

        Raises:
          the session's opening error (the thread has ended then).
        """
        self._thread.start()
        self._ready.wait(timeout)
        if self.error is not None:
            raise self.error
        return self

    def submit(self, command: protocol.Command, reply: Reply) -> None:
        """Queues a checked command; ``reply(text)`` gets its answer (from the worker's
        thread).

        Raises:
          ProtocolError: the queue is full or the worker has stopped.
        """
        if self._stop.is_set() or not self._thread.is_alive():
            raise protocol.ProtocolError("the studio has stopped.")
        try:
            self._commands.put_nowait((command, reply))
        except queue.Full:
            raise protocol.ProtocolError("too many commands waiting: slow down.") from None

    def call(self, fn: Callable[[Session], Any], timeout: float | None = 300) -> Any:
        """Runs ``fn(session)`` in the worker's thread between chunks; returns its result
        (for notebooks and tests: ``call(lambda s: s.view())``)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put((fn, future), timeout=timeout)
        return future.result(timeout)

    def subscribe(self, deliver: Callable[[str], None]) -> int:
        """``deliver(text)`` gets every state message from now on (the newest at once);
        it must return quickly (store, never wait). Returns the key for ``unsubscribe``."""
        with self._lock:
            key = id(deliver)
            self._subscribers[key] = deliver
            latest = self.latest
        self._urgent = True  # a state for the newcomer (rendered if none was)
        if latest is not None:
            deliver(latest)
        self._wake()
        return key

    def unsubscribe(self, key: int) -> None:
        with self._lock:
            self._subscribers.pop(key, None)

    def refresh(self) -> None:
        """Publishes a new state soon (after a ``call`` that changed the session)."""
        self._urgent = True
        self._wake()

    def stop(self, timeout: float | None = 60) -> None:
        """Stops after the current chunk; the session is saved and closed."""
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _wake(self) -> None:
        # A no-op command ends the worker's wait at once.
        with contextlib.suppress(queue.Full):  # a full queue wakes it anyway
            self._commands.put_nowait((None, None))

    # -- the worker's thread -------------------------------------------------------------

    def _main(self) -> None:
        try:
            session = self._open_session()
        except BaseException as problem:  # reported by start()
            self.error = problem
            self._ready.set()
            return
        self.limits = protocol.Limits(
            session.population_size, session.num_patches, session.library_size
        )
        self.config, self.out_dir = session.config, session.out_dir
        # An edit's checkpoint is written after its frame is sent (below), not before.
        session.checkpoint_each_edit = False
        self._stop_at = session.total_steps if session.step < session.total_steps else None
        self._ready.set()
        try:
            while not self._stop.is_set():
                self._drain(session, block=not self.playing)
                if self._stop.is_set():
                    break
                self._publish(session, urgent_only=True)  # an edit shows at once
                session.save_edits()  # then is checkpointed (the log already holds it)
                if self.playing:
                    self._chunk(session)
                    self._publish(session, budgeted=self.playing)
        finally:
            session.close()
            self._fail_waiting()

    def _drain(self, session: Session, *, block: bool) -> None:
        """Makes every queued command; waits for one if ``block`` and none is queued."""
        try:
            item = self._commands.get(timeout=IDLE_WAIT) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._run(session, *item)
            try:
                item = self._commands.get_nowait()
            except queue.Empty:
                return

    def _run(self, session: Session, command, reply) -> None:
        if command is None:
            return
        if callable(command):  # call(): a function and its future
            try:
                reply.set_result(command(session))
            except BaseException as problem:
                reply.set_exception(problem)
            return
        try:
            result = self._run_command(session, command)
        except ValueError as problem:  # the session refused it; nothing changed
            reply(protocol.error(str(problem).strip().splitlines()[0], command.id))
            return
        except Exception as problem:  # not the page's fault: say so, keep running
            reply(protocol.error(f"the studio failed: {problem!r}", command.id))
            return
        self._urgent = True
        reply(protocol.ok(command.id, result))

    def _run_command(self, session: Session, command: protocol.Command):
        kind, fields = command.type, command.fields
        if kind == "edit":
            session.apply(fields["edit"])
        elif kind == "prompt":
            session.set_prompt(fields["prompt"])
        elif kind in ("undo", "redo"):
            session.apply({"op": kind})
        elif kind == "play":
            self.playing = True
            self._stop_at = session.total_steps if session.step < session.total_steps else None
        elif kind == "pause":
            self.playing = False
        elif kind == "step":
            self._advance(session, fields["steps"])
        elif kind == "member":
            self.member = fields["member"]
        elif kind == "export":
            result = session.export(blend=fields["blend"])
            return {"out_dir": result.out_dir, "loss": protocol.finite(result.loss)}
        return None

    def _chunk(self, session: Session) -> None:
        """One chunk (to the next multiple of ``chunk_steps``); pauses at the run's end."""
        chunk = session.config.optim.chunk_steps
        self._advance(session, chunk - session.step % chunk)
        if self._stop_at is not None and session.step >= self._stop_at:
            self.playing = False

    def _advance(self, session: Session, steps: int) -> None:
        metrics = session.advance(steps)
        self.steps_per_second = metrics["steps_per_second"]
        self._dirty = True

    def _publish(
        self, session: Session, *, urgent_only: bool = False, budgeted: bool = False
    ) -> None:
        """Sends a state message to the subscribers if there are any and something changed.
        ``urgent_only``: only after a command. ``budgeted`` (while playing): only if the
        messages so far stay within ``FRAME_BUDGET`` of the worker's time, so a watched
        run of short chunks steps almost as fast as an unwatched one."""
        with self._lock:
            subscribers = list(self._subscribers.values())
        if not subscribers or not (self._urgent or (self._dirty and not urgent_only)):
            return
        now = time.perf_counter()
        wait = self._publish_cost / FRAME_BUDGET
        if budgeted and not self._urgent and now - self._last_publish < wait:
            return
        if budgeted and not self._commands.empty():
            return  # a command waits: its message (at once, after it) shows this chunk too
        self._dirty = self._urgent = False
        self.version += 1
        drawn_before = self._pictures.get("key")
        text = state_message(
            session,
            self.member,
            version=self.version,
            playing=self.playing,
            steps_per_second=self.steps_per_second,
            pictures=self._pictures,
        )
        done = time.perf_counter()
        cost = done - now
        self.publish_seconds += cost
        drew = self._pictures.get("key") != drawn_before
        # The first picture compiles the renderer (not its running cost); a reused one costs
        # next to nothing and would understate what the next new picture will cost.
        if drew and drawn_before is not None:
            smooth = 0.8 * self._publish_cost + 0.2 * cost
            self._publish_cost = smooth if self._publish_cost else cost
        self._last_publish = done
        with self._lock:
            self.latest = text
            subscribers = list(self._subscribers.values())
        for deliver in subscribers:
            deliver(text)

    def _fail_waiting(self) -> None:
        while True:
            try:
                command, reply = self._commands.get_nowait()
            except queue.Empty:
                return
            if callable(command):
                reply.set_exception(RuntimeError("the studio has stopped"))
            elif command is not None:
                reply(protocol.error("the studio has stopped.", command.id))


def state_message(
    session: Session,
    member: int | None,
    *,
    version: int,
    playing: bool,
    steps_per_second: float = 0.0,
    pictures: dict | None = None,
) -> str:
    """The session now as one JSON text: the shown member's frame (PNG, base64), outlines
    ([N][4][2] canvas pixels), hit map (int16 little-endian, base64, [H, W], -1 none),
    frozen and hidden masks, losses, a thinned loss history, prompt, undo/redo.

    ``pictures``: a dict kept between calls, holding the last frame, hit map and outlines;
    they are drawn again only when the step, the edits or the shown member changed (a play,
    pause or export changes none of them, and drawing is most of a message's cost)."""
    view = session.view()
    shown = view.best_member if member is None else member
    height, width = session.config.collage.canvas_shape
    key = (view.step, session.edits_made, shown)
    if pictures is not None and pictures.get("key") == key:
        frame, hits, outlines = pictures["picture"]
    else:
        frame, hits, outlines = _picture(session, shown)
        if pictures is not None:
            pictures.update(key=key, picture=(frame, hits, outlines))
    history = view.history
    with warnings.catch_warnings():  # a step whose every loss is NaN plots as a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        plot = _plot(history)
    message = {
        "type": "state",
        "version": version,
        "time": time.time(),
        "step": view.step,
        "total_steps": view.total_steps,
        "chunk_steps": session.config.optim.chunk_steps,
        "playing": playing,
        "steps_per_second": protocol.finite(steps_per_second),
        "population": len(view.losses),
        "member": member,
        "shown": shown,
        "best_member": view.best_member,
        "losses": [protocol.finite(v) for v in view.losses],
        "best_loss": protocol.finite(view.best_loss),
        "width": width,
        "height": height,
        "frame": frame,
        "hits": hits,
        "outlines": outlines,
        "frozen": view.frozen[shown].tolist(),
        "hidden": view.hidden[shown].tolist(),
        "prompt": view.prompt,
        "can_undo": view.can_undo,
        "can_redo": view.can_redo,
        "plot": plot,
        "out_dir": session.out_dir,
    }
    return json.dumps(message, allow_nan=False)


def _picture(session: Session, shown: int) -> tuple[str, str, list]:
    """A member's frame (PNG, base64), hit map (int16 little-endian, base64) and outlines."""
    png = io.BytesIO()
    Image.fromarray(session.render(shown)).save(png, "PNG", compress_level=1)
    hits = session.hit_map(shown).astype("<i2")
    return (
        base64.b64encode(png.getvalue()).decode(),
        base64.b64encode(hits.tobytes()).decode(),
        np.round(session.outlines(shown), 3).tolist(),
    )


def _plot(history: np.ndarray) -> dict[str, list]:
    """The best and mean loss at up to ``PLOT_POINTS`` steps of ``history`` [steps, P]."""
    if not len(history):
        return {"steps": [], "best": [], "mean": []}
    picks = np.unique(np.linspace(0, len(history) - 1, min(len(history), PLOT_POINTS)).astype(int))
    rows = np.where(np.isfinite(history[picks]), history[picks], np.nan)
    return {
        "steps": (picks + 1).tolist(),
        "best": [protocol.finite(v) for v in np.nanmin(rows, 1)],
        "mean": [protocol.finite(v) for v in np.nanmean(rows, 1)],
    }
