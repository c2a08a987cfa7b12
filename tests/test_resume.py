"""Real `clipclop` processes stopped by real signals: SIGTERM stops after the chunk with a
checkpoint and says where it is, a second Ctrl-C exits at once leaving what is on disk
readable, and a run stopped and resumed ends bit for bit where an uninterrupted run with the
same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from clipclop_jax import GenerateConfig
from clipclop_jax.cli.main import build_parser, config_from_args
from clipclop_jax.io import png_text
from clipclop_jax.runs import checkpoint
from clipclop_jax.runs.interrupt import StopOnSignal

# Four chunks of 20 steps; microbial evolution every 30 steps, so generations fall inside
# chunks; a checkpoint at step 40 and at the end; a frame every chunk.
OPTIONS = {
    "steps": 80,
    "chunk-steps": 20,
    "population": 2,
    "num-patches": 24,
    "size": 64,
    "output-size": 64,
    "lowres-size": 32,
    "highres-size": 64,
    "num-crops": 2,
    "evolution": "microbial",
    "evolution-frequency": 30,
    "checkpoint-every": 40,
    "frame-every": 20,
}
RUN = [*(f"--{k}={v}" for k, v in OPTIONS.items()), "--gif", "--mp4", "--quiet"]
CLI = [sys.executable, "-m", "clipclop_jax.cli.main"]

# The real CLI, except that the progress callback pauses after step PAUSE_AT (its checkpoint,
# if any, already on disk): it touches PAUSED and waits for GO. The test's signals then land
# at a known step however fast or slow the machine is.
PAUSING = textwrap.dedent(
    """
    import os, sys, time
    from clipclop_jax.cli import main as cli

    real = cli.progress_bar

    def progress_bar(total, enabled, **kwargs):
        bar, update = real(total, enabled, **kwargs)

        def paused(step, metrics):
            update(step, metrics)
            if step == int(os.environ["PAUSE_AT"]):
                open(os.environ["PAUSED"], "w").close()
                deadline = time.monotonic() + 120
                while not os.path.exists(os.environ["GO"]) and time.monotonic() < deadline:
                    time.sleep(0.02)

        return bar, paused

    cli.progress_bar = progress_bar
    sys.exit(cli.main(sys.argv[1:]))
    """
)
TIMEOUT = 300


@pytest.fixture(scope="module")
def env(pytestconfig, tmp_path_factory):
    """The processes share a compilation cache (kept in pytest's cache folder between
    sessions, capped by size): only the first to need the chunk compiles it."""
    cache = pytestconfig.cache
    folder = cache.mkdir("jax-compilation-cache") if cache else tmp_path_factory.mktemp("jax")
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    env["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(512 * 2**20)
    return env


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def processes():
    """Processes the fixtures start; any still running at the end are killed."""
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def pausing(args, env, folder, pause_at: int, name: str, processes: list):
    """Starts the pausing CLI; returns the process and the GO file once it has paused."""
    paused, go = str(folder / f"{name}.paused"), str(folder / f"{name}.go")
    env = dict(env, PAUSE_AT=str(pause_at), PAUSED=paused, GO=go)
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSING, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(process)
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(paused):
        if process.poll() is not None:
            raise AssertionError(f"exited early ({process.returncode}): {process.stderr.read()}")
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.05)
    return process, go


@pytest.fixture(scope="module")
def stopped_by_sigterm(processes, env, folders):
    """The run, stopped with SIGTERM after step 20 (before any periodic checkpoint).

    While it waits there, its compiled chunk already in the cache, the uninterrupted
    reference run starts beside it.
    """
    out_dir = folders / "interrupted"
    args = ["generate", "a red circle", "--out", str(out_dir), *RUN]
    process, go = pausing(args, env, folders, 20, "first", processes)
    reference = subprocess.Popen(
        [*CLI, "generate", "a red circle", "--out", str(folders / "reference"), *RUN],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(reference)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # let the signal arrive before the loop looks for it
    open(go, "w").close()
    _, err = process.communicate(timeout=TIMEOUT)
    return out_dir, process.returncode, err, reference


@pytest.fixture(scope="module")
def reference(stopped_by_sigterm, folders):
    process = stopped_by_sigterm[3]
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    return folders / "reference"


def test_sigterm_stops_after_the_chunk_with_a_checkpoint_and_says_where(stopped_by_sigterm):
    out_dir, code, err, _ = stopped_by_sigterm
    assert code == 128 + signal.SIGTERM, err
    saved = checkpoint.load_latest(out_dir)
    assert saved.step == 20 and saved.history.shape == (20, 2)
    assert "stopped at step 20 of 80 (SIGTERM)" in err
    assert f"checkpoint: {saved.path}" in err
    assert f"best collage so far: {out_dir / 'collage.png'}" in err
    assert f"clipclop resume {out_dir}" in err
    config = json.loads(png_text(out_dir / "collage.png")["clipclop_jax_config"])
    assert config["optim"]["steps"] == 80 and config["output"]["checkpoint_every"] == 40


@pytest.fixture(scope="module")
def resumed(stopped_by_sigterm, env):
    out_dir = stopped_by_sigterm[0]
    done = subprocess.run(
        [*CLI, "resume", str(out_dir), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return out_dir


def test_a_stopped_and_resumed_run_ends_exactly_like_an_uninterrupted_one(resumed, reference):
    for name in ("params.npz", "collage.png", "evolution.gif", "config.json"):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    final, expected = checkpoint.load_latest(resumed), checkpoint.load_latest(reference)
    assert final.step == expected.step == 80
    np.testing.assert_array_equal(final.history, expected.history)
    for got, want in zip(final.leaves, expected.leaves, strict=True):
        np.testing.assert_array_equal(got, want)
    assert (resumed / "evolution.mp4").stat().st_size > 0
    frames = sorted(os.listdir(resumed / "frames"))
    assert frames == [f"step-{s:09d}.png" for s in (20, 40, 60, 80)]


def test_a_runs_own_png_reproduces_its_config(reference):
    saved = GenerateConfig.from_dict(json.loads((reference / "config.json").read_text()))
    args = build_parser().parse_args(
        ["generate", "--out", "unused", "--config", str(reference / "collage.png")]
    )
    assert config_from_args(args) == saved


def test_the_first_signal_only_asks_to_stop_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    told = threading.Event()
    with StopOnSignal(on_first=lambda signum: told.set()) as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert told.wait(5) and stop.is_set()
        assert stop.signum == signal.SIGTERM and stop.exit_code == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# Writes checkpoints of a few MB back to back under StopOnSignal, ignoring the first signal
# (as a run does while it writes its last checkpoint and collage).
KEEP_SAVING = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from clipclop_jax.runs.checkpoint import save_checkpoint
    from clipclop_jax.runs.interrupt import StopOnSignal
    from clipclop_jax.search.optimise import RunState

    big = np.random.default_rng(0).random(1_000_000, np.float32)
    state = RunState(np.zeros(3), big, jax.random.key(0), np.int32(0), np.zeros(2), 0, 0.0,
                     False, False)
    with StopOnSignal():
        for step in range(1, 100000):
            save_checkpoint(sys.argv[1], state._replace(step=np.int32(step)), np.zeros((0, 2)),
                            config={}, library_fingerprint="", model_fingerprint="", keep=3)
    """
)


def test_a_second_ctrl_c_exits_at_once_leaving_readable_checkpoints(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", KEEP_SAVING, str(tmp_path)])
    try:
        deadline = time.monotonic() + 120
        while len(checkpoint.list_checkpoints(tmp_path)) < 3:
            assert process.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "no checkpoints appeared"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)
        assert process.poll() is None  # the first only asks
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 128 + signal.SIGINT
    assert time.monotonic() - sent < 5
    for path in checkpoint.list_checkpoints(tmp_path):
        assert checkpoint.load_checkpoint(path).leaves[1].shape == (1_000_000,)
