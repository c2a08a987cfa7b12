"""Patch libraries: the cut-outs a collage is made of, from files, folders and datasets.

The bottom of the pipeline; it knows nothing of collages or CLIP. ``patch_library`` holds the
padded, device-ready arrays (``PatchLibrary``, ``Library``, ``LibraryError``); ``load`` makes
them from a built-in name, a folder or a file (``load_library``, with its disk cache);
``file_formats`` reads, writes and checks library ``.npz`` and original ``.npy`` files
(``save_library``); ``npz_reader`` reads a library ``.npz`` one square at a time
(``load_library_subset``); ``sources`` streams images from folders, ``.npy``/``.npz`` files
and TFDS; ``cutouts`` and ``segment`` cut objects out of photos, as do Hugging Face
segmentation models (``segment_models`` runs one, ``segment_outputs`` turns its label maps or
query masks into labelled regions); ``maker`` builds a curated
library ``.npz`` (filters and selection in ``curation``, with a ``contact_sheet``);
``builtins`` draws the bundled libraries.

A new way to cut patches is a new ``*_masks`` function in ``segment`` named in
``segment.SEGMENTATIONS`` (a model family: ``segment_models``); a new source of images is a
new opener in ``sources``.
"""
