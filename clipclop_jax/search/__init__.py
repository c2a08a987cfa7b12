"""Search: moving a population of collages towards the prompt.

``optimise`` builds the compiled chunk (optax per collage, steps scanned inside one jit);
``evolution`` selects and mutates on a fitness vector (ask/tell, never calls CLIP);
``sharding`` spreads the population axis over devices.

A new optimiser is a name in ``config.OPTIMIZERS`` built in ``optimise.make_optimizer``; a
new evolution strategy is a new entry in ``evolution.SELECTIONS``.
"""
