"""The demo data's words: attributes, captions, and which captions are true of which images.

Every scene carries *labels* (what its salient objects are) and every caption the attributes
it *mentions*, both as ``Mentions`` of up to ``MAX_MENTIONS`` objects. The attribute words
are ``COLOURS`` (each with the HSV range it is drawn from), ``SHAPES`` (from ``drawing``),
``SIZES`` and ``POSITIONS``. ``noun_phrase`` words one object, stating some of its
attributes; ``caption_matches`` says which captions are true of which images, which the
contrastive loss uses as multiple positives; ``label_targets`` gives per-image colour and
shape class targets; ``vocabulary`` lists the words the demo tokenizer keeps whole.

A new colour is an entry in ``COLOURS``; a new way of saying something goes in
``noun_phrase`` (or ``PREFIXES``, ``POSITION_PHRASES``). New words change the vocabulary:
remake the tokenizer (``tools/make_demo_tokenizer.py``) and retrain.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from clipclop_jax.guidance.demo_data.drawing import SHAPES

# (hue in degrees, hue jitter, saturation range, value range); white has no hue.
COLOURS: dict[str, tuple[float, float, tuple[float, float], tuple[float, float]]] = {
    "red": (0.0, 7.0, (0.75, 1.0), (0.65, 1.0)),
    "orange": (28.0, 5.0, (0.8, 1.0), (0.85, 1.0)),
    "yellow": (56.0, 5.0, (0.7, 1.0), (0.85, 1.0)),
    "green": (120.0, 22.0, (0.65, 1.0), (0.55, 1.0)),
    "blue": (225.0, 15.0, (0.7, 1.0), (0.7, 1.0)),
    "purple": (280.0, 12.0, (0.6, 0.95), (0.55, 0.95)),
    "pink": (325.0, 10.0, (0.3, 0.55), (0.9, 1.0)),
    "white": (0.0, 0.0, (0.0, 0.08), (0.88, 1.0)),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPE_PLURALS: dict[str, str] = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
SIZES: tuple[str, ...] = ("small", "medium", "large")  # captions never say "medium"
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "centre": ("in the centre", "in the middle", "in the center"),
}
PREFIXES: tuple[str, ...] = ("", "", "", "a photo of ", "a picture of ", "an image of ")

MAX_MENTIONS = 2  # objects a caption or a label names


class Mentions(NamedTuple):
    """Up to two objects, each by attribute indices; -1 means unknown / not mentioned.

    For an image label, the attributes its salient objects have; for a caption, those it
    states. All fields are [B, 2] int32 except ``count`` [B].
    """

    colour: np.ndarray
    shape: np.ndarray
    size: np.ndarray
    position: np.ndarray
    count: np.ndarray


def vocabulary() -> list[str]:
    """The caption words that get a token of their own in the demo tokenizer's merges.

    All caption words but "big" (a synonym of "large"), which the bundled tokenizer splits
    into sub-word pieces; adding it here changes the tokenizer, so retrain after doing so.
    """
    words = set(COLOUR_NAMES) | set(SHAPES) | set(SHAPE_PLURALS.values()) | {"small", "large"}
    for phrases in POSITION_PHRASES.values():
        for phrase in phrases:
            words.update(phrase.split())
    for prefix in PREFIXES:
        words.update(prefix.split())
    words.update(["a", "an", "and", "something", "object", "shape", "shapes", "many"])
    words.update(["lots", "of", "collage"])
    return sorted(words)


def article(word: str) -> str:
    """The indefinite article before ``word``: "an" before a vowel, else "a"."""
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(
    rng: np.random.Generator, colour: int, shape: int, size: int, pos: int, *, plural: bool = False
) -> tuple[str, tuple[int, int, int, int]]:
    """One noun phrase naming some of an object's attributes, and those it names."""
    mode = rng.choice(3, p=[0.55, 0.1, 0.35]) if colour >= 0 and shape >= 0 else None
    if shape < 0 or mode == 1:  # colour only
        name = COLOUR_NAMES[colour]
        if plural:
            text = rng.choice([name, f"{name} shapes", f"many {name} shapes", f"something {name}"])
        else:
            text = rng.choice([name, f"something {name}", f"a {name} shape", f"a {name} object"])
        return str(text), (colour, -1, -1, -1)
    said_colour = colour if (mode in (None, 0) and colour >= 0) else -1
    said_size = size if size in (0, 2) and rng.uniform() < 0.35 else -1
    said_pos = pos if pos >= 0 and rng.uniform() < 0.35 else -1
    words = []
    if said_size >= 0:
        words.append("small" if said_size == 0 else str(rng.choice(["large", "big"])))
    if said_colour >= 0:
        words.append(COLOUR_NAMES[said_colour])
    if plural and rng.uniform() < 0.7:
        words.append(SHAPE_PLURALS[SHAPES[shape]])
        text = " ".join(words)
        if rng.uniform() < 0.5:
            text = f"{rng.choice(['many', 'lots of', 'a collage of'])} {text}"
    else:
        words.append(SHAPES[shape])
        text = f"{article(words[0])} {' '.join(words)}"
    if said_pos >= 0:
        text += " " + str(rng.choice(POSITION_PHRASES[POSITIONS[said_pos]]))
    return text, (said_colour, shape, said_size, said_pos)


def label_targets(labels: Mentions) -> tuple[np.ndarray, np.ndarray]:
    """Per-image class targets: ([B, num_colours], [B, num_shapes]) float32.

    Each row is uniform over the colours (shapes) of the image's salient objects, or all
    zeros where none is known (mixed groups).
    """
    known = np.arange(MAX_MENTIONS)[None, :] < labels.count[:, None]  # [B, 2]

    def one_hot(values: np.ndarray, n: int) -> np.ndarray:
        hot = (values[..., None] == np.arange(n)) & known[..., None] & (values[..., None] >= 0)
        present = hot.any(axis=1)  # [B, n]
        return present.astype(np.float32) / np.maximum(present.sum(1, keepdims=True), 1)

    return one_hot(labels.colour, len(COLOUR_NAMES)), one_hot(labels.shape, len(SHAPES))


def caption_matches(labels: Mentions, mentioned: Mentions) -> np.ndarray:
    """[B_images, B_captions] bool: caption j is true of image i.

    A caption is true when each object it mentions matches some salient object of the image
    in every attribute it states.
    """
    fields = Mentions._fields[:4]
    # [I, 1, 1, O] labels vs [1, J, M, 1] mentions.
    ok = np.ones((len(labels.count), len(mentioned.count), MAX_MENTIONS, MAX_MENTIONS), bool)
    for f in fields:
        have = getattr(labels, f)[:, None, None, :]
        said = getattr(mentioned, f)[None, :, :, None]
        ok &= (said < 0) | (said == have)
    ok &= (np.arange(MAX_MENTIONS) < labels.count[:, None])[:, None, None, :]
    satisfied = ok.any(axis=-1)  # [I, J, M]
    needed = np.arange(MAX_MENTIONS)[None, :] < mentioned.count[:, None]  # [J, M]
    return np.all(satisfied | ~needed[None], axis=-1)
