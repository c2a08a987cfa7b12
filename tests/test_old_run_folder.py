"""A run folder written by clipclop-jax 0.1.0 before the package was split into subpackages
(and before the hardening of issue #20) still reads and resumes: its checkpoint, config.json
and params.npz are plain data, not module paths, so the layout change cannot break them.

The folder in tests/data was made at commit 7d7eb31 by `generate` on a 32 x 32 canvas,
6 steps in chunks of 3, stopped after the first chunk (checkpoint at step 3)."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np

from clipclop_jax import GenerateConfig, load_collage, load_library, render, resume
from clipclop_jax.runs import checkpoint, run_folder

OLD_RUN = pathlib.Path(__file__).parent / "data" / "run-0.1.0-interrupted"


def test_an_old_run_folder_resumes_to_the_end(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    saved = checkpoint.load_latest(run)
    assert saved.step == 3

    result = resume(run)

    config = GenerateConfig.from_dict(json.loads((OLD_RUN / "config.json").read_text()))
    assert result.history.shape == (config.optim.steps, config.population)
    # The steps done before the stop are kept exactly; the rest are new and scored.
    np.testing.assert_array_equal(result.history[:3], saved.history)
    assert np.all(np.isfinite(result.history[3:]))
    assert result.loss <= float(np.min(saved.history)) + 1e-6
    assert checkpoint.load_latest(run).step == config.optim.steps
    collage, _ = load_collage(run / run_folder.PARAMS_FILE)
    assert collage.patch_index.shape == (config.collage.num_patches,)
    assert (run / run_folder.COLLAGE_FILE).stat().st_size > 0


def test_an_old_params_file_loads_and_renders():
    config = GenerateConfig.from_dict(json.loads((OLD_RUN / "config.json").read_text()))
    collage, fingerprint = load_collage(OLD_RUN / run_folder.PARAMS_FILE)
    assert len(fingerprint) == 32
    library = load_library(
        config.patches, lowres_size=config.lowres_size, highres_size=config.highres_size
    )
    assert library.fingerprint == fingerprint
    image = render(collage, library.low, np.zeros((32, 32, 3), np.float32), config.collage)
    assert image.shape == (32, 32, 3) and float(np.ptp(np.asarray(image))) > 0
