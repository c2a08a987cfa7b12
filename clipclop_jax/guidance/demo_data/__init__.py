"""Procedural captioned images for training and testing the bundled demo CLIP.

Each image holds coloured shapes (circles, squares, triangles, stars, bars, rings, crosses)
drawn analytically with antialiased edges over a black, coloured, gradient or noisy
background, then warped by a random near-identity homography (the small crops, zooms and
perspective that CLIP augmentations make). Three kinds of scene: a single shape, a pair of
shapes, and a group of overlapping cut-outs composited like the collage renderer.

Sampling (NumPy, seeded) is apart from drawing (JAX, jit-able), so the training loop draws
on device and a test can redraw the same scenes. The modules, top to bottom:

* ``zero_shot``: colour and shape accuracy of a CLIP on the data, from class prompts;
* ``scenes``: ``sample_batch``, the scenes to draw with their labels and captions;
* ``captions``: the attribute words, captions, ``caption_matches`` and the vocabulary;
* ``drawing``: ``Scenes`` and ``draw``, the shapes' distance fields and compositing.

A new shape goes in ``drawing``, a new colour or phrasing in ``captions``, a new kind of
scene in ``scenes``; each changes what the demo CLIP was trained on, so retrain it
(``tools/train_demo_clip.py``, after ``tools/make_demo_tokenizer.py`` if words changed).
"""
