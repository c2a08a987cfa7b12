"""Named sets of settings, applied before a config file: ``clipclop generate --preset original``.

``original`` puts back the original CLIP-CLOP's (Arnheim 3's) value of every default that this
project changed so that collages read as their prompt to a model that did not make them
(``benchmarks/judge.py``; docs/quality.md says what each change bought). Defaults this
project chose for other reasons (Adam instead of SGD, normalised CLIP input) are not part of
it: their own settings bring the original's back (docs/parameters.md).
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Arnheim 3's configs/config.yaml and training.py: 4 crops, RandomPerspective(0.6,
    # fill=1), RandomResizedCrop(scale=(0.7, 0.9)), no noise.
    "original": {
        "optim": {"num_crops": 4},
        "augment": {
            "perspective_distortion": 0.6,
            "crop_scale": [0.7, 0.9],
            "fill": 1.0,
            "noise": 0.0,
        },
    },
}


def preset_settings(name: str) -> dict[str, Any]:
    """The nested settings of preset ``name`` (a copy: the caller may change it).

    Raises:
      ValueError: no preset of that name (one line naming the presets there are).
    """
    if name not in PRESETS:
        near = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"no preset {name!r}:{hint} choose one of {', '.join(sorted(PRESETS))}.")
    return copy.deepcopy(PRESETS[name])
