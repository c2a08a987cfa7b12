"""Runs over several processes on one machine, as on a pod slice: 2 and 4 local processes
joined by ``jax.distributed.initialize`` with gloo CPU collectives, each with a few simulated
devices (tests/multiprocess_worker.py is one process).

* At the README's settings (224 x 224 canvas, 100 patches, 8 crops, evolution, population
  4), 2 processes x 2 devices run, stop after the first chunk and resume in the same process
  group, and end at the collage one process with 4 devices makes uninterrupted, bit for bit
  (docs/devices.md, "Same seed, any device count"); only process 0 writes the run's files.
* A run of 4 processes x 2 devices, stopped after its first chunk, resumes on 2 processes x 2
  devices with ``clipclop resume --distributed`` (its orbax checkpoint re-sharded on restore)
  and ends where one process with one device ends uninterrupted.

Every process runs with FMAs off (``--xla_cpu_max_isa=AVX``), as the same-bits rule asks.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from clipclop_jax import CollageConfig, GenerateConfig, OptimConfig
from clipclop_jax.runs import checkpoint
from clipclop_jax.search.evolution import EvolutionConfig

WORKER = pathlib.Path(__file__).parent / "multiprocess_worker.py"
TIMEOUT = 900  # seconds for one process group, start-up and compiles included


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_groups(tmp_path, groups) -> list[list[dict]]:
    """Starts every group's processes at once and waits for all of them; any failure or the
    timeout kills every process started here. Returns each group's per-process reports.

    Args:
      groups: (name, processes, devices per process, config, run folder, actions).
    """
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_max_isa=AVX")
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent.parent), *sys.path])
    started, reports = [], []
    try:
        for name, count, devices, config, out, actions in groups:
            config_path = tmp_path / f"{name}-config.json"
            config_path.write_text(json.dumps(config.to_dict()))
            port = free_port() if count > 1 else 0
            paths = []
            for index in range(count):
                report = tmp_path / f"{name}-{index}.json"
                log = open(tmp_path / f"{name}-{index}.log", "w")  # noqa: SIM115
                command = [
                    sys.executable,
                    str(WORKER),
                    f"--devices={devices}",
                    f"--port={port}",
                    f"--processes={count}",
                    f"--process-id={index}",
                    f"--config={config_path}",
                    f"--out={out}",
                    f"--report={report}",
                    *actions,
                ]
                process = subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                started.append((f"{name}-{index}", process, log))
                paths.append(report)
            reports.append(paths)
        deadline = time.monotonic() + TIMEOUT
        for label, process, log in started:
            code = process.wait(timeout=max(1, deadline - time.monotonic()))
            log.close()
            assert code == 0, f"{label} exited {code}:\n" + _tail(log.name)
    finally:
        for _, process, log in started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
    return [[json.loads(path.read_text()) for path in paths] for paths in reports]


def _tail(path: str) -> str:
    return pathlib.Path(path).read_text(errors="replace")[-4000:]


def assert_same_run(folder, reference):
    for name in ("params.npz", "collage.png", "config.json"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    final, expected = checkpoint.load_latest(folder), checkpoint.load_latest(reference)
    assert final.step == expected.step
    np.testing.assert_array_equal(final.history, expected.history)
    for got, want in zip(final.leaves, expected.leaves, strict=True):
        np.testing.assert_array_equal(got, want)


# README: clipclop generate "a blue square:1 | red:-0.5" --steps 300 --population 4; two
# steps in chunks of one, so the resumed chunk starts from the first one's Adam update.
README_RUN = GenerateConfig(
    prompt="a blue square:1 | red:-0.5",
    population=4,
    optim=OptimConfig(steps=2, chunk_steps=1),
)


def test_two_processes_give_the_one_process_collage_and_only_process_0_writes(tmp_path):
    runs = run_groups(
        tmp_path,
        [
            ("two", 2, 2, README_RUN, tmp_path / "two", ["generate-stop", "resume"]),
            ("one", 1, 4, README_RUN, tmp_path / "one", ["generate"]),
        ],
    )
    two, one = runs
    assert [r["process_count"] for r in two] == [2, 2] and one[0]["process_count"] == 1
    assert all(r["device_count"] == 4 and r["local_device_count"] == 2 for r in two)
    assert [r["stopped_at"] for r in two] == [[1], [1]]
    assert_same_run(tmp_path / "two", tmp_path / "one")
    # Process 0 moved the run's files into place; process 1 none of them (its share of
    # each checkpoint it writes through orbax, whose folder process 0 finalises).
    shared = {str(tmp_path / "two" / n) for n in ("params.npz", "collage.png", "config.json")}
    assert shared <= set(two[0]["moved"])
    assert not [p for p in two[1]["moved"] if p.startswith(str(tmp_path / "two"))]


SMALL_RUN = GenerateConfig(
    prompt="a red circle",
    population=8,
    output_size=32,
    lowres_size=32,
    highres_size=32,
    collage=CollageConfig(canvas_height=32, canvas_width=32, num_patches=8),
    optim=OptimConfig(steps=4, chunk_steps=2, num_crops=2),
    evolution=EvolutionConfig(method="microbial", frequency=1),
)


def test_a_four_process_run_resumes_on_two_processes_as_if_never_stopped(tmp_path):
    run = tmp_path / "run"
    first = run_groups(
        tmp_path,
        [
            ("four", 4, 2, SMALL_RUN, run, ["generate-stop"]),
            ("one", 1, 1, SMALL_RUN, tmp_path / "one", ["generate"]),
        ],
    )
    assert [r["stopped_at"] for r in first[0]] == [[2]] * 4
    assert all(r["device_count"] == 8 for r in first[0])
    saved = checkpoint.load_latest(run)
    assert saved.step == 2 and os.path.basename(saved.path) == "step_000000002"
    # Restored on 2 processes of 2 devices: the state saved over 8 devices, re-sharded,
    # by `clipclop resume --distributed` in each process.
    (second,) = run_groups(tmp_path, [("two", 2, 2, SMALL_RUN, run, ["cli-resume"])])
    assert all(r["device_count"] == 4 for r in second)
    assert_same_run(run, tmp_path / "one")
