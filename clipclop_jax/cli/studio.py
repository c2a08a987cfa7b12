"""``clipclop studio``: the studio's web page on a new session or an existing run folder.

It parses, starts a ``StudioWorker`` (which owns the session) and a ``StudioServer``, prints
the page's address and waits; Ctrl-C or SIGTERM stops the server and saves the session.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import webbrowser

from clipclop_jax.cli.options import CONFIG_OPTIONS, add_config_options, settings_from_args

DEFAULT_PORT = 8765
# What `--from` may change: where the library and model are now.
FROM_OPTIONS = ("model", "patches")


def add_studio_parser(commands) -> argparse.ArgumentParser:
    studio = commands.add_parser(
        "studio",
        help="steer a collage by hand in a web page while it optimises",
        description="A local web page on a collage being optimised: drag, scale, rotate and "
        "freeze patches, change the prompt, play, pause, step, undo, export. A new session "
        "from PROMPT and the generate options (--out DIR), or --from a run folder. "
        "See docs/studio.md.",
    )
    studio.add_argument(
        "prompt", nargs="?", help='weighted prompts, e.g. "a cat made of leaves:1 | blurry:-0.5"'
    )
    studio.add_argument(
        "--from",
        dest="from_dir",
        metavar="RUN_DIR",
        help="open a run folder (generate's, a batch prompt's, a tile's or a studio session's) "
        "and continue it, with its settings",
    )
    studio.add_argument("--out", help="the new session's folder (new or empty)")
    studio.add_argument(
        "--overwrite", action="store_true", help="reuse a non-empty --out, replacing its run"
    )
    studio.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; any other needs the "
        "token printed in the URL)",
    )
    studio.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (default {DEFAULT_PORT}; 0: any free one)",
    )
    studio.add_argument("--token", help="the access token to require (default: a random one)")
    studio.add_argument("--paused", action="store_true", help="start paused (press play)")
    studio.add_argument("--open", action="store_true", help="open the page in a web browser")
    add_config_options(studio)
    return studio


def run_studio(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, not {args.port}.")
    try:
        from clipclop_jax.studio.server import StudioServer
        from clipclop_jax.studio.worker import StudioWorker
    except ModuleNotFoundError as error:
        # The web server is an extra: a plain `pip install clipclop-jax` has no starlette.
        raise ValueError(
            f"the studio needs its web server ({error.name} is not installed): "
            "pip install 'clipclop-jax[studio]'."
        ) from error
    open_session = _session_opener(args)
    print("clipclop: opening the session (the first chunk compiles: a minute or so on a CPU)")
    worker = StudioWorker(open_session, playing=not args.paused).start()
    try:
        server = StudioServer(worker, host=args.host, port=args.port, token=args.token).start()
    except OSError as error:
        worker.stop()
        raise OSError(
            f"cannot listen on {args.host}:{args.port} ({error.strerror}): choose another "
            "--port (0: any free one)."
        ) from None
    except BaseException:
        worker.stop()
        raise
    print(f"clipclop: studio at {server.url}", flush=True)
    print(f"clipclop: session folder {worker.out_dir}; Ctrl-C stops and saves", flush=True)
    if args.open:
        webbrowser.open(server.url)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while worker.alive and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    print(
        f"clipclop: studio stopped; saved. Continue with: clipclop studio --from {worker.out_dir}"
        f" (or clipclop resume {worker.out_dir})",
        file=sys.stderr,
    )
    return 0


def _session_opener(args: argparse.Namespace):
    """What the worker calls to make the session; the settings are checked here, first."""
    from clipclop_jax.studio.session import Session

    if args.from_dir is not None:
        given = [
            dest
            for dest in CONFIG_OPTIONS
            if dest not in FROM_OPTIONS and getattr(args, dest, None) is not None
        ]
        if args.preset or args.config or args.set or args.out or given:
            names = [f"--{d.replace('_', '-')}" for d in given if d != "prompt"]
            names += ["PROMPT"] if "prompt" in given else []
            names += ["--preset"] * bool(args.preset) + ["--config"] * bool(args.config)
            names += ["--set"] * bool(args.set)
            names += ["--out"] * bool(args.out)
            raise ValueError(
                f"--from continues the run with its own settings: leave out {', '.join(names)} "
                "(change the prompt in the page)."
            )
        return lambda: Session.open(args.from_dir, patches=args.patches, model=args.model)
    config = settings_from_args(args)
    if not args.out:
        raise ValueError("a new session needs a folder: give --out DIR (or --from RUN_DIR).")
    return lambda: Session.create(config, args.out, overwrite=args.overwrite)
