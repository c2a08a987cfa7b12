"""Patch libraries: the cut-outs a collage is made of, from files, folders and datasets.

The bottom of the pipeline; it knows nothing of collages or CLIP. ``patch_library`` turns
cut-outs into padded, device-ready arrays (``PatchLibrary``, ``Library``, ``load_library``);
``sources`` streams images from folders, ``.npy``/``.npz`` files and TFDS; ``cutouts`` and
``segment`` cut objects out of photos; ``maker`` builds a curated library ``.npz`` (with a
``contact_sheet``); ``builtins`` draws the bundled libraries.

A new way to cut patches is a new ``*_masks`` function in ``segment`` named in
``segment.SEGMENTATIONS``; a new source of images is a new opener in ``sources``.
"""
