"""The command line: argv -> config -> ``clipclop_jax.runs``. ``main`` dispatches the
subcommands; ``options`` holds the settings options ``generate`` and ``batch`` share;
``batch`` and ``patches`` add their subcommands. Nothing below this package knows about the
terminal. A new subcommand is a new module here added in ``main.build_parser``.
"""
