"""Guidance: what CLIP thinks of a collage, as a loss.

``perceptor`` wraps CLIP (the bundled demo model, a hub name or a local folder;
``hub_files`` fetches just the files a hub checkpoint needs, ``converted_weights`` turns
PyTorch checkpoints into Flax ones); ``ensemble`` reads ``--model A,B:0.5`` and holds several
CLIPs whose losses add up; ``prompts`` parses weighted
prompts and grids; ``augment`` makes the distorted crops CLIP scores, from the homographies
of ``random_warps`` sampled by ``warp``; ``objective`` is the loss of one collage (render ->
augment -> embed -> compare); the ``demo_data`` package draws the captioned shapes the demo
CLIP was trained on.

A new perceptor is a new loader in ``perceptor.load_perceptor`` returning a ``Perceptor``; a
new augmentation is a matrix in ``warp`` (its random twin in ``random_warps``) composed in
``augment``.
"""
