"""The studio's speed, driving its page in headless Chromium (Playwright), demo CLIP:

* edit -> frame: from the page sending an edit (a mouse-wheel scale on a patch, at a random
  moment of a chunk while the run plays) to the edited frame drawn on the page's canvas;
  the target is at most one chunk + 100 ms;
* frames per second the page draws while the run plays;
* the cost of an idle open page on the optimisation: steps/s with no page against steps/s
  with one page open and untouched, in alternating rounds (the target is under 5 %).

    python benchmarks/studio.py [--size 224] [--patches 100] [--population 2]
        [--chunk-steps 10] [--seconds 20] [--rounds 3] [--edits 20]

Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

from playwright.sync_api import sync_playwright

from clipclop_jax import CollageConfig, GenerateConfig, OptimConfig
from clipclop_jax.studio import protocol
from clipclop_jax.studio.browser import launch
from clipclop_jax.studio.server import StudioServer
from clipclop_jax.studio.session import Session
from clipclop_jax.studio.worker import StudioWorker


def command(worker, kind):
    worker.submit(protocol.Command(kind, {}, None), lambda text: None)


def steps_per_second(worker, seconds):
    """The worker's steps per wall second over ``seconds`` of playing."""
    start_step, start = worker.call(lambda s: s.step), time.perf_counter()
    command(worker, "play")
    time.sleep(seconds)
    command(worker, "pause")
    end_step, end = worker.call(lambda s: s.step), time.perf_counter()
    return (end_step - start_step) / (end - start)


def open_page(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.set_default_timeout(120_000)
    page.goto(server.url)
    page.wait_for_function("window.studio.state && window.studio.drawnVersion")
    return page


def edit_latencies(page, count, chunk_seconds):
    """Seconds from each wheel edit's send to its frame drawn, edits at random phases."""
    box = page.locator("#overlay").bounding_box()
    state = page.evaluate("window.studio.state")
    latencies = []
    rng = random.Random(0)
    for number in range(count):
        time.sleep(rng.uniform(0, chunk_seconds))
        hits = page.evaluate("Array.from(window.studio.hits)")
        covered = [i for i, h in enumerate(hits) if h >= 0]
        pixel = covered[len(covered) // 2]
        x, y = pixel % state["width"] + 0.5, pixel // state["width"] + 0.5
        page.mouse.move(
            box["x"] + x * box["width"] / state["width"],
            box["y"] + y * box["height"] / state["height"],
        )
        sent = page.evaluate("window.studio.nextId")
        page.mouse.wheel(0, -100 if number % 2 else 100)
        page.wait_for_function(
            "id => window.studio.okVersion[id] !== undefined && window.studio.drawn.some("
            "d => d[0] > window.studio.okVersion[id])",
            arg=sent,
        )
        latency = page.evaluate(
            "id => window.studio.drawn.find(d => d[0] > window.studio.okVersion[id])[1]"
            " - window.studio.sentAt[id]",
            sent,
        )
        latencies.append(latency / 1000)
    return latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--population", type=int, default=2)
    parser.add_argument("--chunk-steps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    config = GenerateConfig(
        prompt="a red circle",
        model="demo",
        patches="shapes",
        population=args.population,
        collage=CollageConfig(
            canvas_height=args.size, canvas_width=args.size, num_patches=args.patches
        ),
        optim=OptimConfig(steps=10**6, chunk_steps=args.chunk_steps),
        output_size=args.size,
    )
    out = os.path.join(tempfile.mkdtemp(), "session")
    worker = StudioWorker(lambda: Session.create(config, out), playing=False).start()
    server = StudioServer(worker).start()
    worker.call(lambda s: s.advance(args.chunk_steps))  # compile the chunk
    with sync_playwright() as playwright:
        browser = launch(playwright)
        open_page(browser, server).close()  # compile the renderer, PNG, hit map
        without, with_page, fps, shares = [], [], [], []
        for _ in range(args.rounds):
            without.append(steps_per_second(worker, args.seconds))
            page = open_page(browser, server)
            drawn = page.evaluate("window.studio.framesDrawn")
            start, spent = time.perf_counter(), worker.publish_seconds
            with_page.append(steps_per_second(worker, args.seconds))
            shares.append((worker.publish_seconds - spent) / (time.perf_counter() - start))
            fps.append(
                (page.evaluate("window.studio.framesDrawn") - drawn) / (time.perf_counter() - start)
            )
            page.close()
        chunk_seconds = args.chunk_steps / statistics.median(without)
        page = open_page(browser, server)
        command(worker, "play")
        latencies = edit_latencies(page, args.edits, chunk_seconds)
        command(worker, "pause")
        page.close()
        browser.close()
    server.stop()
    slower = 1 - statistics.median(with_page) / statistics.median(without)
    print(f"load: {os.getloadavg()}")
    print(f"steps/s without a page: {[round(v, 2) for v in without]}")
    print(f"steps/s with an idle page: {[round(v, 2) for v in with_page]}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| one chunk ({args.chunk_steps} steps), no page | {chunk_seconds * 1000:.0f} ms |")
    print(
        f"| edit -> frame drawn, median / max of {args.edits} | "
        f"{statistics.median(latencies) * 1000:.0f} / {max(latencies) * 1000:.0f} ms |"
    )
    print(f"| frames drawn per second while playing | {statistics.median(fps):.1f} |")
    print(
        "| worker time spent on state messages with a page open | "
        f"{statistics.median(shares) * 100:.1f} % |"
    )
    print(
        f"| steps/s: no page / idle page open (median of {args.rounds} rounds of "
        f"{args.seconds:.0f} s) | {statistics.median(without):.2f} / "
        f"{statistics.median(with_page):.2f} ({slower * 100:+.1f} % slower) |"
    )


if __name__ == "__main__":
    main()
