"""Command line: argv -> config -> runs. Nothing below the cli package knows about the terminal."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import signal
import sys

from clipclop_jax.cli.batch import add_batch_parser, run_batch
from clipclop_jax.cli.options import add_config_options, settings_from_args
from clipclop_jax.cli.patches import add_patches_parser, run_patches
from clipclop_jax.cli.studio import add_studio_parser, run_studio
from clipclop_jax.runs.interrupt import FinalRenderError
from clipclop_jax.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipclop",
        description="CLIP-guided collage (CLIP-CLOP) in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"clipclop-jax {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_distributed_option(add_generate_parser(commands))
    res = commands.add_parser(
        "resume",
        help="continue an interrupted run",
        description="Continue the run in DIR from its newest checkpoint, with the settings "
        "saved there. See docs/runs.md.",
    )
    res.add_argument("dir", metavar="DIR", help="the run's output folder (its --out)")
    res.add_argument(
        "--patches",
        metavar="PATH",
        help="where the run's patch library is now, if it moved (must be the same library)",
    )
    res.add_argument(
        "--model",
        metavar="PATH",
        help="where the run's CLIP model folder is now, if it moved (must be the same weights; "
        "for an ensemble the whole A,B:WEIGHT spec)",
    )
    res.add_argument("--quiet", action="store_true", help="no progress bar")
    add_distributed_option(res)
    bl = commands.add_parser(
        "blend",
        help="blend a finished run's collage again",
        description="Render a finished run's best collage (DIR/params.npz) at its output size "
        "with gradient-domain blending of the seams; writes DIR/collage-MODE.png.",
    )
    bl.add_argument("dir", metavar="DIR", help="the run's output folder (its --out)")
    bl.add_argument("--mode", choices=("poisson", "mixed"), default="poisson", help="blend mode")
    bl.add_argument(
        "--patches",
        metavar="PATH",
        help="where the run's patch library is now, if it moved (must be the same library)",
    )
    add_batch_parser(commands)
    add_patches_parser(commands)
    add_studio_parser(commands)
    return parser


def add_generate_parser(commands) -> argparse.ArgumentParser:
    gen = commands.add_parser(
        "generate",
        help="make a collage from a prompt",
        description="Optimise a population of collages towards a prompt; write the best one. "
        "Settings come from --config FILE (if given), then the options, then --set.",
    )
    gen.add_argument(
        "prompt",
        nargs="?",
        help='weighted prompts, e.g. "a cat made of leaves:1 | blurry:-0.5" (or "prompt" '
        "in --config)",
    )
    gen.add_argument("--out", required=True, help="output folder (new or empty)")
    gen.add_argument(
        "--overwrite", action="store_true", help="reuse a non-empty --out, replacing its run"
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_options(gen)
    return gen


def config_from_args(args: argparse.Namespace):
    """The run's ``GenerateConfig``: --config FILE, then the options given, then --set."""
    return settings_from_args(args)


def progress_bar(total: int, enabled: bool, *, initial: int = 0):
    """A tqdm bar driven by the API's progress callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="step", disable=not enabled, dynamic_ncols=True)

    def update(step: int, metrics: dict[str, float]) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(
            best=f"{metrics['best_loss']:.4f}", speed=f"{metrics['steps_per_second']:.2f}/s"
        )

    return bar, update


def run_generate(args: argparse.Namespace) -> int:
    from clipclop_jax.collage.tiles import TileGrid
    from clipclop_jax.runs.generate import generate
    from clipclop_jax.runs.tiled import generate_tiled

    config = config_from_args(args)
    tiles = 1 if config.tiles is None else TileGrid.parse(config.tiles).count
    run = generate if config.tiles is None else generate_tiled
    return drive(
        lambda progress_fn, should_stop: run(
            config,
            out_dir=args.out,
            progress_fn=progress_fn,
            overwrite=args.overwrite,
            should_stop=should_stop,
        ),
        total=config.optim.steps * tiles,
        quiet=args.quiet,
    )


def run_blend(args: argparse.Namespace) -> int:
    from clipclop_jax.runs.reblend import blend_run

    path = blend_run(args.dir, args.mode, patches=args.patches)
    print(f"wrote {path}")
    return 0


def run_resume(args: argparse.Namespace) -> int:
    from clipclop_jax.runs.checkpoint import latest_checkpoint, read_meta
    from clipclop_jax.runs.generate import resume
    from clipclop_jax.studio.session import is_session, resume_session

    if is_session(args.dir):  # a studio session's folder: continue it with its edits
        resume = resume_session

    total, initial = None, 0
    path = latest_checkpoint(args.dir)
    if path is not None:
        try:
            meta = read_meta(path)
            total, initial = meta["config"]["optim"]["steps"], meta["step"]
        except Exception:  # resume() says what is wrong with the file; the bar has no total
            pass
    return drive(
        lambda progress_fn, should_stop: resume(
            args.dir,
            patches=args.patches,
            model=args.model,
            progress_fn=progress_fn,
            should_stop=should_stop,
        ),
        total=total,
        initial=initial,
        quiet=args.quiet,
    )


def drive(call, *, total: int | None, initial: int = 0, quiet: bool = False) -> int:
    """Runs ``call(progress_fn, should_stop)`` under a progress bar; the first Ctrl-C or
    SIGTERM stops it after the current chunk (a checkpoint is written), the second at once."""
    from clipclop_jax.runs.interrupt import RunInterrupted, StopOnSignal

    bar, update = progress_bar(total, not quiet, initial=initial)
    with StopOnSignal(on_first=_say_stopping) as stop, bar:
        try:
            result = call(update, stop.is_set)
        except RunInterrupted as stopped:
            bar.close()
            _report_stop(stopped, stop.signum)
            return stop.exit_code
    print(f"best loss {result.loss:.4f}; wrote {result.out_dir}/collage.png")
    return 0


def _say_stopping(signum: int) -> None:
    # Runs beside the main thread (interrupt.StopOnSignal): a plain write, no print().
    name = signal.Signals(signum).name
    message = f"\nclipclop: {name}: stopping after this chunk; again to quit at once.\n"
    with contextlib.suppress(OSError):  # stderr may be closed (a pipe whose reader left)
        os.write(2, message.encode())


def _report_stop(stopped, signum: int | None) -> None:
    name = f" ({signal.Signals(signum).name})" if signum else ""
    lines = [f"stopped at step {stopped.step} of {stopped.total}{name}."]
    if stopped.checkpoint:
        lines.append(f"checkpoint: {stopped.checkpoint}")
        if stopped.collage:  # none before the first collage is scored
            lines.append(f"best collage so far: {stopped.collage}")
        lines.append(f"continue with: clipclop resume {shlex.quote(stopped.out_dir)}")
    for line in lines:
        print(f"clipclop: {line}", file=sys.stderr)


def add_distributed_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--distributed",
        nargs="?",
        const="auto",
        metavar="HOST:PORT,N,I",
        help="one process of a multi-process run (docs/devices.md): jax.distributed.initialize "
        "first, found from the environment on Cloud TPU, SLURM, Kubernetes and Open MPI, or "
        "given as the coordinator's HOST:PORT, the process count N and this process's index I",
    )


def join_processes(spec: str) -> None:
    """``jax.distributed.initialize`` from ``--distributed``'s value, before any JAX work.

    Raises:
      ValueError: the value is not "auto" or HOST:PORT,N,I with 0 <= I < N.
    """
    import jax

    if spec == "auto":
        jax.distributed.initialize()
        return
    parts = spec.split(",")
    if len(parts) != 3 or not parts[1].strip().isdigit() or not parts[2].strip().isdigit():
        raise ValueError(
            f"--distributed {spec!r}: give HOST:PORT,N,I (e.g. 10.0.0.2:1234,4,0), or no value "
            "to find them from the environment."
        )
    address, count, index = parts[0].strip(), int(parts[1]), int(parts[2])
    if not 0 <= index < count:
        raise ValueError(f"--distributed {spec!r}: the process index I must be 0..{count - 1}.")
    jax.distributed.initialize(address, num_processes=count, process_id=index)


def _check_out(args: argparse.Namespace) -> None:
    # An empty --out would surface much later as "[Errno 2] No such file or directory: ''".
    out = getattr(args, "out", None)
    if out is not None and not out.strip():
        raise ValueError("--out is empty: give the output path, e.g. --out runs/cat.")


def _show_progress_lines() -> None:
    # The package logs slow one-off work (converting PyTorch weights) to its logger; the
    # terminal shows those lines, nothing else of the logging tree.
    logger = logging.getLogger("clipclop_jax")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("clipclop: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    _show_progress_lines()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _check_out(args)
        if getattr(args, "distributed", None):
            join_processes(args.distributed)
        if args.command == "generate":
            return run_generate(args)
        if args.command == "resume":
            return run_resume(args)
        if args.command == "blend":
            return run_blend(args)
        if args.command == "batch":
            return run_batch(args)
        if args.command == "patches":
            return run_patches(args)
        if args.command == "studio":
            return run_studio(args)
    except (ValueError, OSError, FinalRenderError) as error:
        # Our errors are one line that names the problem and the fix; say just that.
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"clipclop: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipclop: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
