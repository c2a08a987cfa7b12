"""The studio's socket protocol: every message a page may send, checked in full before the
worker sees it (``parse``), and the replies the server sends (``error``, ``ok``).

A page sends one JSON object per text message, ``{"type": ..., "id": ...}`` with the
fields its type takes (``TYPES``); ``id`` (optional, an integer or a short string) comes back
in the reply. Anything else (not JSON, NaN or Infinity, a number out of bounds, a wrong type,
an unknown or missing field, an unknown patch or member, more than ``MAX_MESSAGE_BYTES``) is a
``ProtocolError`` with a one-line message, and nothing reaches the session. Edits are checked
by ``edits.check_edit`` against the run's sizes (``Limits``). A new message type goes in
``TYPES`` and in ``_check_fields``, and the worker's ``_run_command``.

The server sends ``{"type": "state", ...}`` (the session now: see ``worker.state_message``)
to every page after each chunk and edit, ``{"type": "ok", "id", "result"}`` when a command
is done and ``{"type": "error", "id", "message"}`` when it is refused.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

from clipclop_jax.studio import edits

MAX_MESSAGE_BYTES = 64 * 1024  # an edit is under 200 bytes; a prompt at most 10 000 chars
MAX_STEPS = 10_000  # one "step" command
MAX_ID_CHARS = 64

# type -> its fields besides "type" and "id" (exactly these).
TYPES: dict[str, tuple[str, ...]] = {
    "edit": ("edit",),
    "prompt": ("prompt",),
    "undo": (),
    "redo": (),
    "play": (),
    "pause": (),
    "step": ("steps",),
    "member": ("member",),
    "export": ("blend",),
}


class ProtocolError(ValueError):
    """A message the studio refuses (one line; nothing changed)."""


class Limits(NamedTuple):
    """The run's sizes that edits are checked against."""

    population: int
    num_patches: int
    library_size: int


class Command(NamedTuple):
    """A checked message: its type, its checked fields, and the id to answer with."""

    type: str
    fields: dict[str, Any]
    id: int | str | None = None


def parse(text: Any, limits: Limits) -> Command:
    """Checks one socket message.

    Raises:
      ProtocolError: one line naming the problem; nothing was done.
    """
    if not isinstance(text, str):
        raise ProtocolError("send text messages (JSON), not binary ones.")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message over {MAX_MESSAGE_BYTES} bytes: send less.")
    try:
        message = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as problem:
        raise ProtocolError(f"not a JSON message ({_first_line(problem)}).") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message is a JSON object, not {type(message).__name__}.")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        raise ProtocolError(f"unknown message type {kind!r}: use one of {', '.join(TYPES)}.")
    ident = message.get("id")
    if ident is not None and not _good_id(ident):
        raise ProtocolError(
            f"id must be an integer or a string of at most {MAX_ID_CHARS} characters."
        )
    fields = TYPES[kind]
    extra = sorted(set(message) - {"type", "id", *fields})
    missing = [f for f in fields if f not in message]
    if extra or missing:
        raise ProtocolError(
            f"message {kind!r} takes "
            + (", ".join(fields) if fields else "no fields")
            + (f"; unknown: {', '.join(map(str, extra))}" if extra else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + "."
        )
    try:
        checked = _check_fields(kind, message, limits)
    except ValueError as problem:
        raise ProtocolError(_first_line(problem)) from None
    return Command(kind, checked, ident)


def _check_fields(kind: str, message: dict, limits: Limits) -> dict[str, Any]:
    if kind == "edit":
        edit = message["edit"]
        if isinstance(edit, dict) and edit.get("op") in ("undo", "redo", "prompt"):
            raise ValueError(f"send {edit['op']!r} as a message of its own type.")
        return {"edit": edits.check_edit(edit, **limits._asdict())}
    if kind == "prompt":
        edit = edits.check_edit({"op": "prompt", "prompt": message["prompt"]}, **limits._asdict())
        return {"prompt": edit["prompt"]}
    if kind == "step":
        steps = message["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in 1..{MAX_STEPS}, not {steps!r}.")
        return {"steps": steps}
    if kind == "member":
        member = message["member"]
        if member is not None and (
            isinstance(member, bool)
            or not isinstance(member, int)
            or not 0 <= member < limits.population
        ):
            raise ValueError(
                f"member must be null (the best) or an integer in 0..{limits.population - 1}."
            )
        return {"member": member}
    if kind == "export":
        if not isinstance(message["blend"], bool):
            raise ValueError("blend must be true or false.")
        return {"blend": message["blend"]}
    return {}


def error(message: str, ident: int | str | None = None) -> str:
    """The error reply's text."""
    return json.dumps({"type": "error", "id": ident, "message": message})


def ok(ident: int | str | None, result: Any = None) -> str:
    """The reply to a command that was done."""
    return json.dumps({"type": "ok", "id": ident, "result": result}, allow_nan=False)


def _good_id(ident: Any) -> bool:
    if isinstance(ident, bool):
        return False
    if isinstance(ident, int):
        return abs(ident) < 2**53
    return isinstance(ident, str) and len(ident) <= MAX_ID_CHARS


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _first_line(problem: BaseException) -> str:
    text = str(problem).strip()
    return text.splitlines()[0] if text else type(problem).__name__


def finite(value: float) -> float | None:
    """A float for a JSON state message: None where it is not finite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None
