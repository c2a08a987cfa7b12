"""Helpers for tests that save small CLIPs as model folders of their own."""

from __future__ import annotations

import pathlib
import shutil

from clipclop_jax.guidance.hub_files import SUPPORT_FILES
from clipclop_jax.guidance.perceptor import demo_model_path


def copy_demo_tokenizer(folder: pathlib.Path) -> None:
    """Give ``folder`` the demo's tokenizer and image processor: every support file but the
    model's own config.json, which the caller writes."""
    for name in SUPPORT_FILES:
        source = demo_model_path() / name
        if name != "config.json" and source.is_file():
            shutil.copy(source, folder / name)
