"""Prompt strings: weighted prompts, tile grids and tile templates (no CLIP here).

Three small languages, all plain strings so they fit a command line or a config file:

* weighted prompts, ``"a cat made of leaves:1 | blurry:-0.5"``: prompts separated by ``|``,
  each with an optional ``:weight`` (default 1); a negative weight pushes the collage away;
* tile grids, as the original's ``tile_prompt_string`` (``arnheim_3/main.py``): columns
  separated by ``|``, rows by ``/``, ``"sky | sun | sky / tree | field | chicken"``;
* tile templates, as the original's ``tile_prompt_formating`` (``"close-up of {}"``).

Errors are ``PromptError`` (a ``ValueError``) with a one-line message naming the problem and
the fix. Embedding the texts is the perceptor's job.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

# One exception for every prompt problem, whether caught here or by the text encoder.
from clipclop_jax.guidance.perceptor import PromptError

__all__ = [
    "PromptError",
    "WeightedPrompt",
    "format_prompts",
    "parse_grid",
    "parse_prompts",
]

# A trailing ":number" is a weight. "inf" and "nan" are matched so that they can be refused
# by name rather than read as text.
_WEIGHT = re.compile(
    r"^(?P<text>.*):\s*(?P<weight>[+-]?(?:\d+\.?\d*(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?"
    r"|inf(?:inity)?|nan))\s*$",
    re.IGNORECASE | re.DOTALL,
)


# Weights multiply cosine similarities in [-1, 1]; the optimiser (Adam) is blind to the loss's
# scale, so a larger weight only risks float32 overflow in the loss and its gradients.
MAX_PROMPT_WEIGHT = 1e4


class WeightedPrompt(NamedTuple):
    """One prompt and its weight.

    Attributes:
      text: the prompt, whitespace stripped.
      weight: how much the prompt counts; negative pushes away (default 1).
    """

    text: str
    weight: float


def parse_prompts(spec: str) -> list[WeightedPrompt]:
    """Parses ``"text[:weight] | text[:weight] | ..."`` into weighted prompts.

    A colon followed by a number at the end of a prompt starts its weight; any other colon
    is text (``"a sign saying: hello"``), and only the last colon counts
    (``"a:b:2"`` is ``("a:b", 2.0)``). A prompt that itself ends in a number after a colon
    (``"the year: 1999"``) needs an explicit weight: ``"the year: 1999:1"``.

    Args:
      spec: the prompts string.

    Returns:
      The prompts in order, texts stripped, weights as floats.

    Raises:
      PromptError: the spec is empty, a prompt between bars is empty or has only a weight,
        a weight is not finite or beyond ``MAX_PROMPT_WEIGHT`` in size, or every weight is
        zero (in float32, as the loss computes them).
    """
    if not spec.strip():
        raise PromptError("the prompt is empty: give at least one prompt, e.g. 'a cat:1'.")
    parts = spec.split("|")
    prompts = []
    for number, part in enumerate(parts, start=1):
        part = part.strip()
        if not part:
            raise PromptError(
                f"prompt {number} of {len(parts)} in {spec!r} is empty: "
                "remove the extra '|' or write a prompt there."
            )
        match = _WEIGHT.match(part)
        if match is None:
            prompts.append(WeightedPrompt(part, 1.0))
            continue
        text, weight = match["text"].strip(), float(match["weight"])
        if not text:
            raise PromptError(
                f"prompt {number} {part!r} has a weight but no text: write the text before ':'."
            )
        if not abs(weight) <= MAX_PROMPT_WEIGHT:  # also refuses nan
            raise PromptError(
                f"prompt {number} {part!r} has weight {weight:g}: use a finite weight between "
                f"{-MAX_PROMPT_WEIGHT:g} and {MAX_PROMPT_WEIGHT:g} (1 or -0.5 are typical)."
            )
        prompts.append(WeightedPrompt(text, weight))
    if all(np.float32(p.weight) == 0 for p in prompts):
        raise PromptError(
            f"every prompt weight in {spec!r} is zero: give at least one prompt a non-zero weight."
        )
    return prompts


def parse_grid(spec: str, *, rows: int | None = None, cols: int | None = None) -> list[list[str]]:
    """Parses a tile or region grid, ``"a | b | c / d | e | f"``, into rows of prompts.

    Columns are separated by ``|`` and rows by ``/``, left to right and top to bottom, as
    the original's ``tile_prompt_string``. Prompts are plain text (no weights), stripped.

    Args:
      spec: the grid string.
      rows: if given, the number of rows the grid must have (the original's
        ``tiles_high``).
      cols: if given, the number of columns each row must have (``tiles_wide``).

    Returns:
      ``grid[row][col]``, a list of equally long lists of prompts.

    Raises:
      PromptError: the spec or a cell is empty, rows have different lengths, or the grid
        does not have ``rows`` x ``cols`` cells.
      ValueError: ``rows`` or ``cols`` is below 1.
    """
    for name, value in (("rows", rows), ("cols", cols)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} is out of range: use an int >= 1 or None.")
    if not spec.strip():
        raise PromptError("the prompt grid is empty: write e.g. 'sky | sun / tree | field'.")
    grid = [[cell.strip() for cell in row.split("|")] for row in spec.split("/")]
    for r, row in enumerate(grid, start=1):
        for c, cell in enumerate(row, start=1):
            if not cell:
                raise PromptError(
                    f"row {r}, column {c} of the prompt grid is empty: write a prompt there "
                    "or remove the extra '|' or '/'."
                )
        if len(row) != len(grid[0]):
            raise PromptError(
                f"row {r} of the prompt grid has {len(row)} prompts but row 1 has "
                f"{len(grid[0])}: give every row the same number of '|'-separated prompts."
            )
    if rows is not None and len(grid) != rows:
        raise PromptError(
            f"the prompt grid has {len(grid)} rows but {rows} are needed: separate rows with '/'."
        )
    if cols is not None and len(grid[0]) != cols:
        raise PromptError(
            f"the prompt grid has {len(grid[0])} columns but {cols} are needed: "
            "separate columns with '|'."
        )
    return grid


def format_prompts(template: str, prompt: str) -> str:
    """Puts ``prompt`` into a template such as ``"close-up of {}"``.

    Every ``{}`` becomes the prompt; other braces are kept as written (unlike
    ``str.format``, a stray ``{x}`` is not an error).

    Args:
      template: text with at least one ``{}``.
      prompt: the text to insert.

    Returns:
      The filled-in template.

    Raises:
      PromptError: the template has no ``{}``.
    """
    if "{}" not in template:
        raise PromptError(
            f"the template {template!r} has no '{{}}': "
            "put '{}' where the prompt goes, e.g. 'close-up of {}'."
        )
    return template.replace("{}", prompt)
