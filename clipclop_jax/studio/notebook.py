"""The studio from a notebook cell (Jupyter or Colab): ``start_studio`` runs the worker and
the server in background threads and shows the page in the cell's output.

In Colab the kernel's port is reached through Colab's proxy
(``google.colab.output.serve_kernel_port_as_iframe``; ``proxy_url`` gives the address for a
new tab via ``google.colab.kernel.proxyPort``); the proxy rewrites Host and Origin, so those
checks are off there (the server still listens on 127.0.0.1 only). In Jupyter it is an IFrame
of ``http://127.0.0.1:PORT/``: the browser must run on the kernel's machine (a remote
Jupyter needs a proxy such as jupyter-server-proxy). ``Studio`` also steers the session from
Python (``view``, ``apply``, ``advance``, ``frame``, ``export``), between chunks.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from clipclop_jax.studio.server import StudioServer
from clipclop_jax.studio.session import Session
from clipclop_jax.studio.worker import StudioWorker


class Studio:
    """A running studio: ``url``, ``show()``, ``stop()``, and the session through the
    worker's thread."""

    def __init__(self, worker: StudioWorker, server: StudioServer, *, height: int):
        self.worker, self.server, self.height = worker, server, height

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def out_dir(self) -> str:
        return self.worker.out_dir

    def show(self):
        """Shows the page in the cell's output (Colab: through its proxy)."""
        if in_colab():
            from google.colab import output  # type: ignore[import-not-found]

            output.serve_kernel_port_as_iframe(self.server.port, height=str(self.height))
            return None
        from IPython.display import IFrame, display

        frame = IFrame(self.url, width="100%", height=self.height)
        display(frame)
        return frame

    def proxy_url(self) -> str:
        """The page's address for a browser tab: Colab's proxied one, else ``url``."""
        if in_colab():
            from google.colab.output import eval_js  # type: ignore[import-not-found]

            return eval_js(f"google.colab.kernel.proxyPort({self.server.port})")
        return self.url

    def call(self, fn) -> Any:
        """``fn(session)`` in the worker's thread, between chunks."""
        return self.worker.call(fn)

    def view(self):
        return self.call(lambda session: session.view())

    def apply(self, edit: dict) -> None:
        """An edit as the page sends it (``docs/runs.md`` lists them); pages see it."""
        self.call(lambda session: session.apply(edit))
        self.worker.refresh()

    def advance(self, steps: int) -> dict:
        result = self.call(lambda session: session.advance(steps))
        self.worker.refresh()
        return result

    def frame(self, member: int | None = None) -> bytes:
        """The member's picture now (None: the best) as PNG bytes."""
        from PIL import Image

        image = self.call(lambda session: session.render(member))
        data = io.BytesIO()
        Image.fromarray(image).save(data, "PNG")
        return data.getvalue()

    def export(self, *, blend: bool = False):
        """What ``generate`` writes at the end of a run; returns its ``GenerateResult``."""
        return self.call(lambda session: session.export(blend=blend))

    def stop(self) -> None:
        """Stops the server and the worker; the session is saved."""
        self.server.stop()


def in_colab() -> bool:
    return "google.colab" in sys.modules


def start_studio(
    config=None,
    out_dir: str | os.PathLike | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    resources=None,
    overwrite: bool = False,
    playing: bool = True,
    port: int = 0,
    height: int = 720,
    show: bool = True,
) -> Studio:
    """Starts a studio on a new session (``config``, ``out_dir``) or a run folder
    (``run_dir``) and shows it in the cell's output.

    Raises:
      ValueError: neither or both of ``config`` and ``run_dir``; the session's own errors.
    """
    if (config is None) == (run_dir is None):
        raise ValueError("give a config and out_dir for a new session, or run_dir to open one.")
    if config is not None and out_dir is None:
        raise ValueError("a new session needs out_dir, the folder it is saved in.")
    if run_dir is not None:
        opener = lambda: Session.open(run_dir, resources=resources)  # noqa: E731
    else:
        opener = lambda: Session.create(  # noqa: E731
            config, out_dir, resources=resources, overwrite=overwrite
        )
    worker = StudioWorker(opener, playing=playing).start()
    try:
        server = StudioServer(worker, port=port, check_origin=not in_colab()).start()
    except BaseException:
        worker.stop()
        raise
    studio = Studio(worker, server, height=height)
    if show:
        studio.show()
    return studio
