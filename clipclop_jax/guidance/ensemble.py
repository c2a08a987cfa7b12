"""Several CLIPs guiding one collage at once: ``--model demo,PATH:0.5``.

A model spec is one or more models separated by ``,``, each with an optional ``:weight``
(``parse_model_spec``). ``load_guides`` turns it into what the loss is built from: one model
gives the plain ``Perceptor`` (so a single-model run compiles and computes exactly what it
did before ensembles existed), several give a ``PerceptorEnsemble``.

An ensemble is a tuple of perceptors and their weights, normalised to sum to 1. Each member
keeps its own tokenizer, input size and normalisation: ``embed_text`` returns one embedding
array per member, and ``params`` is the tuple of the members' weights, a pytree that enters
the compiled step as an argument like a single model's weights. The loss
(``objective.make_collage_loss``) scores the same crop geometry at each member's own
resolution and adds the members' losses by weight; see docs/parameters.md, "Ensembles".

A new kind of guide is another class with the same ``params``/``embed_text`` interface and a
branch in ``objective.make_collage_loss``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import jax

from clipclop_jax.guidance.perceptor import Perceptor, load_perceptor


def parse_model_spec(text: str) -> list[tuple[str, float]]:
    """Parses ``"A,B:0.5"`` into ``[("A", 1.0), ("B", 0.5)]`` (weights as given, not normalised).

    A part's last ``:`` starts a weight only when what follows reads as a number, so a
    Windows drive (``C:\\models\\clip``) or a folder with a colon in its name stays a name. A
    spec that is an existing file or folder as a whole is one model, commas and all.

    Raises:
      ValueError: an empty part, a weight that is not a finite number > 0, or a model named
        twice (one line, with the fix).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"model {text!r} is empty: give 'demo', a hub name or a folder.")
    if os.path.exists(os.path.expanduser(text)):
        return [(text, 1.0)]
    members: list[tuple[str, float]] = []
    for part in text.split(","):
        part = part.strip()
        name, weight = part, 1.0
        head, colon, tail = part.rpartition(":")
        if colon:
            try:
                weight = float(tail)
            except ValueError:
                pass  # not a weight: the colon belongs to the name
            else:
                name = head.strip()
                if not (math.isfinite(weight) and weight > 0):
                    raise ValueError(
                        f"model {part!r} in {text!r} has weight {tail.strip()}: give a finite "
                        "weight > 0, or leave the model out."
                    )
        if not name:
            raise ValueError(
                f"model spec {text!r} has an empty part: separate models by single commas, "
                "as in 'demo,PATH:0.5'."
            )
        if any(name == other for other, _ in members):
            raise ValueError(
                f"model {name!r} is named twice in {text!r}: give it once, with the sum of "
                "its weights."
            )
        members.append((name, weight))
    return members


def format_model_spec(members: Sequence[tuple[str, float]]) -> str:
    """The spec text of ``members``, ``parse_model_spec``'s inverse (weight 1 is left out)."""

    def weight_text(weight: float) -> str:
        text = repr(float(weight))
        return text[:-2] if text.endswith(".0") else text

    return ",".join(
        name if weight == 1.0 else f"{name}:{weight_text(weight)}" for name, weight in members
    )


@dataclasses.dataclass(frozen=True, eq=False)
class PerceptorEnsemble:
    """Several CLIP models whose losses add up, each weighted.

    Attributes:
      name: the model spec it was loaded from ("demo,PATH:0.5").
      members: the perceptors, in the spec's order (two or more).
      weights: each member's weight, normalised to sum to 1.
    """

    name: str
    members: tuple[Perceptor, ...]
    weights: tuple[float, ...]

    def __post_init__(self):
        if len(self.members) < 2 or len(self.weights) != len(self.members):
            raise ValueError(
                f"an ensemble needs two or more models with one weight each, got "
                f"{len(self.members)} models and {len(self.weights)} weights: load one model "
                "as a Perceptor."
            )
        if not all(math.isfinite(w) and w > 0 for w in self.weights):
            raise ValueError(f"ensemble weights {self.weights} must be finite and > 0.")
        total = math.fsum(self.weights)
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "weights", tuple(float(w) / total for w in self.weights))

    @property
    def params(self) -> tuple[Any, ...]:
        """The members' CLIP weights, one pytree each: pass it into jitted code as an argument."""
        return tuple(m.params for m in self.members)

    def embed_text(self, texts: Sequence[str]) -> tuple[jax.Array, ...]:
        """Embeds prompts with every member's own tokenizer and text tower.

        Returns:
          One [T, D_m] float32 array of L2-normalised rows per member.

        Raises:
          PromptError: a prompt is too long for some member's text encoder (the message
            names that member).
        """
        # Every member tokenizes before any embeds: a prompt too long for the last member
        # fails before the first one's text tower runs.
        for member in self.members:
            member.tokenize(texts)
        return tuple(m.embed_text(texts) for m in self.members)


Guides = Perceptor | PerceptorEnsemble


def load_guides(spec: str) -> Guides:
    """The CLIP model(s) of a model spec (``parse_model_spec``).

    One model (whatever its weight, which normalises to 1) is the plain ``Perceptor`` of
    ``load_perceptor``, so a single-model run is the same program as before; two or more
    are a ``PerceptorEnsemble`` of models each loaded with ``load_perceptor``.

    Raises:
      ValueError: the spec does not parse; PerceptorError: a member cannot be loaded.
    """
    members = parse_model_spec(spec)
    if len(members) == 1:
        return load_perceptor(members[0][0])
    perceptors = tuple(load_perceptor(name) for name, _ in members)
    return PerceptorEnsemble(spec, perceptors, tuple(w for _, w in members))
