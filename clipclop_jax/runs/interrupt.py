"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

The first signal only sets a flag: the run loop checks it between compiled chunks, writes a
checkpoint and the best collage, and raises ``RunInterrupted``. A second signal ends the
process at once with ``os._exit(128 + signal)``: every file the package writes is written
to a temporary name and renamed over the target, so what is on disk stays readable.

Python runs signal handlers only in the main thread and only between bytecodes, so a
handler would wait for a compiled chunk (or an XLA compilation) to finish. The second
signal must not wait: CPython writes every signal's number to a *wakeup fd* from its C-level
handler, and a small watcher thread reading that pipe acts on it while the main thread is
inside XLA (which releases the GIL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Sequence

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):  # noqa: N818 (an outcome, not an error)
    """A run stopped early on request; what it wrote lets ``resume`` continue it.

    Attributes:
      step: steps done.
      total: steps the run was to do.
      out_dir: the run's folder, or None for a run without one.
      checkpoint: the checkpoint written on stopping, or None.
      collage: the best collage's PNG, or None.
      result: the ``GenerateResult`` of the best collage so far.
    """

    def __init__(self, step, total, *, out_dir=None, checkpoint=None, collage=None, result=None):
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"stopped at step {step} of {total}{where}")
        self.step = step
        self.total = total
        self.out_dir = out_dir
        self.checkpoint = checkpoint
        self.collage = collage
        self.result = result


class FinalRenderError(RuntimeError):
    """The final render failed (e.g. out of memory) after the run's state was saved.

    Attributes:
      out_dir: the run's folder.
      saved: the files that hold the optimised collage (params.npz, the checkpoint).
    """

    def __init__(self, size: str, error: BaseException, *, out_dir: str, saved: Sequence[str]):
        reason = (str(error).strip().splitlines() or [""])[0]
        super().__init__(
            f"the final render at {size} failed ({type(error).__name__}: {reason}); the "
            f"optimised collage is safe in {' and '.join(saved)}: lower output_size in "
            f"{os.path.join(out_dir, 'config.json')} and run `clipclop blend {out_dir}`, or "
            f"run `clipclop resume {out_dir}` on a machine with more memory."
        )
        self.out_dir = out_dir
        self.saved = list(saved)


class StopOnSignal:
    """Context manager: the first SIGINT/SIGTERM asks the run to stop, the second exits.

    Use ``is_set`` as ``generate``'s ``should_stop``::

        with StopOnSignal() as stop:
            generate(config, out_dir=out, should_stop=stop.is_set)

    Outside the main thread (where Python cannot install handlers) it does nothing and
    ``is_set`` stays False. Handlers and the wakeup fd are restored on exit.

    Args:
      signals: the signals to catch.
      on_first: called as ``on_first(signum)`` from the watcher thread on the first signal
        (e.g. to tell the user the run stops after the current chunk); keep it to
        ``os.write``, it runs beside the main thread. An exception it raises is ignored.
    """

    def __init__(
        self,
        signals: Sequence[int] = STOP_SIGNALS,
        *,
        on_first: Callable[[int], None] | None = None,
    ):
        self._signals = tuple(signals)
        self._on_first = on_first
        self._event = threading.Event()
        self.signum: int | None = None
        self._active = False

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()

    @property
    def exit_code(self) -> int:
        """The conventional status of a process stopped by the signal received: 128 + signum."""
        return 128 + (self.signum or signal.SIGINT)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        # The Python-level handlers only replace the defaults (KeyboardInterrupt, death);
        # the watcher does the work, in time even while the main thread is inside XLA.
        self._previous = {s: signal.signal(s, _ignore) for s in self._signals}
        self._watcher = threading.Thread(target=self._watch, name="stop-on-signal", daemon=True)
        self._watcher.start()
        self._active = True
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._active:
            return
        self._active = False
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self._write)  # the watcher reads EOF and ends
        self._watcher.join(timeout=5)
        os.close(self._read)

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in self._signals:
                    self._received(signum)

    def _received(self, signum: int) -> None:
        if self._event.is_set():
            os._exit(128 + signum)
        self.signum = signum
        self._event.set()
        if self._on_first is not None:
            # Only a message (e.g. to a stderr that is a closed pipe): the watcher must live
            # on whatever it raises, or the second signal would go unheard.
            with contextlib.suppress(Exception):
                self._on_first(signum)


def _ignore(signum, frame) -> None:
    del signum, frame
