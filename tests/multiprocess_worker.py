"""One process of a multi-process run, as tests/test_multiprocess.py starts them.

    python tests/multiprocess_worker.py --devices D [--port PORT --processes N --process-id I]
        --config CONFIG.json --out RUN_DIR --report REPORT.json ACTION...

With ``--processes`` above 1 the process joins the others through
``jax.distributed.initialize("127.0.0.1:PORT", ...)`` with gloo CPU collectives; each process
has ``D`` simulated CPU devices. The actions run in order in the same process group (so they
share its start-up and compiled programs):

* ``generate``: a new run in RUN_DIR;
* ``generate-stop``: a new run that stops after its first chunk (``RunInterrupted``);
* ``resume``: ``resume(RUN_DIR)`` to the end;
* ``cli-resume``: ``clipclop resume RUN_DIR --distributed=127.0.0.1:PORT,N,I`` (alone: the
  command joins the process group itself).

REPORT.json records the device and process counts and every file this process moved into
place (``os.replace``/``os.rename``: how atomic writes end), for the "only process 0 writes
the shared files" check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument(
        "actions", nargs="+", choices=("generate", "generate-stop", "resume", "cli-resume")
    )
    args = parser.parse_args()

    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    cli = args.actions == ["cli-resume"]  # `clipclop resume --distributed` joins itself
    if args.processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.processes > 1 and not cli:
        jax.distributed.initialize(
            f"127.0.0.1:{args.port}",
            num_processes=args.processes,
            process_id=args.process_id,
            initialization_timeout=300,
        )

    moved: list[str] = []
    for name in ("replace", "rename"):
        original = getattr(os, name)

        def recording(src, dst, *rest, _original=original, **kwargs):
            moved.append(os.path.abspath(os.fspath(dst)))
            return _original(src, dst, *rest, **kwargs)

        setattr(os, name, recording)

    from clipclop_jax import GenerateConfig, generate
    from clipclop_jax.runs.generate import resume
    from clipclop_jax.runs.interrupt import RunInterrupted

    with open(args.config, encoding="utf-8") as file:
        config = GenerateConfig.from_dict(json.load(file))
    stopped = []
    for action in args.actions:
        if action == "cli-resume":
            from clipclop_jax.cli.main import main as clipclop

            join = f"--distributed=127.0.0.1:{args.port},{args.processes},{args.process_id}"
            code = clipclop(["resume", args.out, "--quiet", *[join] * (args.processes > 1)])
            if code:
                raise SystemExit(f"clipclop resume exited {code}")
            continue
        if action == "resume":
            resume(args.out)
            continue
        calls = []  # should_stop is asked before every chunk: stop before the second

        def after_one_chunk(calls=calls):
            calls.append(None)
            return len(calls) > 1

        try:
            generate(
                config,
                out_dir=args.out,
                should_stop=after_one_chunk if action == "generate-stop" else None,
            )
        except RunInterrupted as error:
            stopped.append(error.step)
    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "stopped_at": stopped,
        "moved": moved,
    }
    with open(args.report, "w", encoding="utf-8") as file:
        json.dump(report, file)
    if args.processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
