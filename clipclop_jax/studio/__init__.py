"""The studio: steer a collage by hand while it optimises.

``session`` holds ``Session`` (a run folder opened for stepping and editing; ``replay``,
``resume_session``); ``edits`` checks and applies the edit vocabulary (move, scale, rotate,
squeeze, recolour, front/back, swap, hide/show/add, freeze/unfreeze) to a run state on the
host. The web studio builds on ``Session``: ``worker`` (the thread that owns a session and
runs it), ``protocol`` (every socket message checked), ``access`` (host, origin, token),
``server`` (starlette + uvicorn; the page in ``static/``), ``notebook`` (a notebook cell's
glue); ``browser`` finds a Chromium to drive the page. docs/studio.md and docs/runs.md
describe it.
"""
