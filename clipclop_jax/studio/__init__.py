"""The studio: steer a collage by hand while it optimises.

``session`` holds ``Session`` (a run folder opened for stepping and editing; ``replay``,
``resume_session``); ``edits`` checks and applies the edit vocabulary (move, scale, rotate,
squeeze, recolour, front/back, swap, hide/show/add, freeze/unfreeze) to a run state on the
host. The server, page and notebook glue build on ``Session``. docs/studio.md and
docs/runs.md describe it.
"""
