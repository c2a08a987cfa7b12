"""Takes docs/images/studio.png: the studio's page in headless Chromium, on a short demo-CLIP
session with one patch frozen (its padlock) and the pointer over another (its outline).

Usage:
  python tools/studio_screenshot.py [OUT_PNG] [--steps 60]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from playwright.sync_api import sync_playwright

from clipclop_jax import CollageConfig, GenerateConfig, OptimConfig
from clipclop_jax.studio.browser import launch
from clipclop_jax.studio.server import StudioServer
from clipclop_jax.studio.session import Session
from clipclop_jax.studio.worker import StudioWorker


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="docs/images/studio.png")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    config = GenerateConfig(
        prompt="a red circle:1 | a blue square:0.5",
        model="demo",
        patches="shapes",
        population=2,
        collage=CollageConfig(canvas_height=160, canvas_width=160, num_patches=24),
        optim=OptimConfig(steps=200, chunk_steps=10),
        output_size=160,
    )
    out_dir = os.path.join(tempfile.mkdtemp(), "session")
    worker = StudioWorker(lambda: Session.create(config, out_dir), playing=False).start()
    server = StudioServer(worker).start()
    try:
        worker.call(lambda session: session.advance(args.steps))
        hits = worker.call(lambda session: session.hit_map(None))
        slots, counts = np.unique(hits[hits >= 0], return_counts=True)
        frozen, hovered = slots[np.argsort(counts)[-2:]]
        worker.call(
            lambda session: session.apply({"op": "freeze", "member": None, "patch": int(frozen)})
        )
        worker.refresh()
        with sync_playwright() as playwright:
            browser = launch(playwright)
            page = browser.new_page(viewport={"width": 900, "height": 600})
            page.goto(server.url)
            page.wait_for_function(
                "window.studio.state && window.studio.drawnVersion >= window.studio.state.version"
                " && window.studio.state.frozen.some(f => f)"
            )
            rows, cols = np.nonzero(hits == hovered)
            box = page.locator("#overlay").bounding_box()
            scale = box["width"] / config.collage.canvas_width
            page.mouse.move(
                box["x"] + (cols.mean() + 0.5) * scale, box["y"] + (rows.mean() + 0.5) * scale
            )
            page.wait_for_timeout(300)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
