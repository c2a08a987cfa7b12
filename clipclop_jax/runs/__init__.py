"""Runs: a config in, a collage and a run folder out; stopping, resuming, batches and tiles.

``generate`` is the orchestrator (``generate``, ``resume``) and reads as a table of contents;
each job it calls lives in its own module: ``settings`` (``GenerateConfig``), ``preflight``
(checks before anything loads), ``resources`` (model and library), ``setup`` (keys,
guidance, starting population), ``chunks`` (driving the compiled chunks), ``run_files``,
``checkpoint`` and ``run_folder`` (the run folder), ``outputs`` (the final render and
files), ``reblend``, ``video``, ``interrupt``, ``config_files``; ``batch`` and ``tiled``
build on ``generate``.

A new kind of run (like ``batch`` or ``tiled``) is a new module here that calls
``generate.generate``.
"""
