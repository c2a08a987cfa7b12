"""The studio's page in a real headless Chromium (Playwright), on one server and session
shared by every test here (demo CLIP, 32-pixel canvas, 4 patches, chunks of 2 steps):
the page draws the canvas, a drag moves a patch by the pixels dragged, a click freezes a
patch through steps, bad socket messages change nothing, a second tab sees the first one's
edit, and a session stopped and resumed equals one that never stopped."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from clipclop_jax import (
    CollageConfig,
    GenerateConfig,
    OptimConfig,
    Resources,
    load_library,
    load_perceptor,
)
from clipclop_jax.cli.main import main
from clipclop_jax.runs.outputs import load_collage
from clipclop_jax.studio.browser import launch
from clipclop_jax.studio.server import StudioServer
from clipclop_jax.studio.session import Session, read_log, replay
from clipclop_jax.studio.worker import StudioWorker, state_message

CONFIG = GenerateConfig(
    prompt="a red circle",
    population=2,
    output_size=32,
    lowres_size=16,
    highres_size=32,
    collage=CollageConfig(canvas_height=32, canvas_width=32, num_patches=4),
    optim=OptimConfig(steps=40, chunk_steps=2, num_crops=1, use_augmentations=False),
)
TIMEOUT = 60_000  # ms a page may wait for the studio (a busy 2-core machine)


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    cache = tmp_path_factory.mktemp("library-cache")
    library = load_library("shapes", lowres_size=16, highres_size=32, cache_dir=cache)
    return Resources(load_perceptor("demo"), library)


@pytest.fixture(scope="module")
def studio(resources, tmp_path_factory):
    out = tmp_path_factory.mktemp("studio") / "run"
    worker = StudioWorker(
        lambda: Session.create(CONFIG, out, resources=resources), playing=False
    ).start()
    server = StudioServer(worker).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(studio, browser):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.set_default_timeout(TIMEOUT)
    page.goto(studio.url)
    page.wait_for_function("window.studio.state && window.studio.drawnVersion")
    yield page
    page.close()


def view(studio):
    return studio.worker.call(lambda session: session.view())


def next_id(page) -> int:
    """The id the page's next message will carry."""
    return page.evaluate("window.studio.nextId")


def wait_reply(page, ident: int) -> dict:
    """The reply to message ``ident``, once the state that follows it is on the page."""
    page.wait_for_function("id => window.studio.replies.some(r => r.id === id)", arg=ident)
    reply = page.evaluate("id => window.studio.replies.find(r => r.id === id)", ident)
    if reply["type"] == "ok":  # every ok is followed by a new state
        page.wait_for_function(
            "id => window.studio.state.version > window.studio.okVersion[id]", arg=ident
        )
    return reply


def settled(page, studio):
    """Waits until the page shows the worker's newest state."""
    page.wait_for_function(
        "v => window.studio.drawnVersion >= v && window.studio.state.version >= v",
        arg=studio.worker.version,
    )


def screen_point(page, x: float, y: float) -> tuple[float, float, float]:
    """Canvas pixel (x, y) -> page coordinates; and screen pixels per canvas pixel."""
    box = page.locator("#overlay").bounding_box()
    ratio = box["width"] / CONFIG.collage.canvas_width
    return box["x"] + x * ratio, box["y"] + y * ratio, ratio


def a_patch(page, studio, exclude=()) -> tuple[int, float, float]:
    """A visible patch and a canvas point well inside it (from the page's own hit map)."""
    settled(page, studio)
    hits = np.asarray(page.evaluate("Array.from(window.studio.hits)")).reshape(32, 32)
    best = None
    for patch in set(hits[hits >= 0].tolist()) - set(exclude):
        rows, cols = np.nonzero(hits == patch)
        count = len(rows)
        if best is None or count > best[0]:
            middle = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
            best = (count, patch, cols[middle] + 0.5, rows[middle] + 0.5)
    assert best is not None, "no visible patch on the canvas"
    return best[1:]


def test_the_page_loads_and_draws_the_canvas(page):
    assert page.locator("#canvas").is_visible()
    size = page.evaluate(
        "[document.getElementById('canvas').width, document.getElementById('canvas').height]"
    )
    assert size == [32, 32]
    drawn = page.evaluate(
        "Array.from(document.getElementById('canvas').getContext('2d')"
        ".getImageData(0, 0, 32, 32).data).filter((v, i) => i % 4 < 3 && v > 0).length"
    )
    assert drawn > 0  # the collage is there, not a blank canvas
    assert page.locator("#overlay polygon").count() == CONFIG.collage.num_patches


def test_a_state_message_draws_again_only_when_its_picture_changed(studio):
    def probe(session):
        drawn, render = [], session.render
        session.render = lambda member=None: drawn.append(member) or render(member)
        pictures, messages = {}, []

        def message(member, **changes):
            text = state_message(
                session, member, version=len(messages), playing=False, pictures=pictures, **changes
            )
            messages.append(json.loads(text))

        try:
            message(0)
            message(0, steps_per_second=1.5)  # nothing in the picture changed: reused
            message(1)  # another member
            session.apply({"op": "move", "member": 1, "patch": 0, "dx": 4.0, "dy": 0.0})
            message(1)  # an edit
            session.undo()
        finally:
            del session.render
        return drawn, messages

    drawn, (first, same, other, moved) = studio.worker.call(probe)
    assert drawn == [0, 1, 1]
    assert same["frame"] == first["frame"] and same["steps_per_second"] == 1.5
    assert other["shown"] == 1 and moved["outlines"][0] != other["outlines"][0]


def test_dragging_a_patch_moves_it_by_the_pixels_dragged(page, studio):
    patch, x, y = a_patch(page, studio)
    member = page.evaluate("window.studio.state.shown")
    before = view(studio)
    sx, sy, ratio = screen_point(page, x, y)
    ident = next_id(page)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(sx + 20, sy - 10, steps=4)
    page.mouse.move(sx + 40, sy - 24, steps=4)
    page.mouse.up()
    assert wait_reply(page, ident)["type"] == "ok"
    after = view(studio)
    moved = after.params.translation[member, patch] - before.params.translation[member, patch]
    on_screen = (
        moved
        * np.array([CONFIG.collage.canvas_width / 2, CONFIG.collage.canvas_height / 2])
        * ratio
    )
    np.testing.assert_allclose(on_screen, [40, -24], atol=1.0)  # within a screen pixel
    others = np.delete(np.arange(CONFIG.collage.num_patches), patch)
    np.testing.assert_array_equal(
        after.params.translation[member, others], before.params.translation[member, others]
    )


def test_a_click_freezes_a_patch_bit_for_bit_through_steps(page, studio):
    patch, x, y = a_patch(page, studio)
    member = page.evaluate("window.studio.state.shown")
    sx, sy, _ = screen_point(page, x, y)
    ident = next_id(page)
    page.mouse.click(sx, sy)
    assert wait_reply(page, ident)["type"] == "ok"
    settled(page, studio)
    assert page.locator(f'#overlay .lock[data-patch="{patch}"]').count() == 1  # the padlock
    before = view(studio)
    assert before.frozen[member, patch]
    for _ in range(3):  # K = 3 chunks of 2 steps
        step = page.evaluate("window.studio.state.step")
        page.click("#step")
        page.wait_for_function(f"window.studio.state.step > {step}")
    after = view(studio)
    assert after.step == before.step + 6
    for field, a, b in zip(before.params._fields, before.params, after.params, strict=True):
        np.testing.assert_array_equal(a[member, patch], b[member, patch], err_msg=field)
    assert not np.array_equal(before.params.translation[member], after.params.translation[member])


BAD_MESSAGES = [
    "{not json",
    "[1, 2]",
    '{"type": "teleport"}',
    '{"type": "edit", "edit": {"op": "move", "member": 0, "patch": 99, "dx": 1, "dy": 0}}',
    '{"type": "edit", "edit": {"op": "move", "member": 0, "patch": 0, "dx": NaN, "dy": 0}}',
    '{"type": "edit", "edit": {"op": "move", "member": 0, "patch": 0, "dx": 1e308, "dy": 0}}',
    '{"type": "edit", "edit": {"op": "move", "member": 0, "patch": 0, "dx": "1", "dy": 0}}',
    '{"type": "edit", "edit": {"op": "scale", "member": 5, "patch": 0, "factor": 2}}',
    '{"type": "step", "steps": -3}',
    '{"type": "step", "steps": 1, "evil": true}',
    '{"type": "member", "member": "all"}',
    '{"type": "prompt", "prompt": ""}',
    '{"type": "export", "blend": "yes"}',
    json.dumps({"type": "prompt", "prompt": "x" * 70_000}),
    "[" * 50_000 + "]" * 50_000,
]


def test_malformed_socket_messages_get_errors_and_change_nothing(page, studio):
    settled(page, studio)
    before = view(studio)
    log = read_log(studio.worker.out_dir)
    checkpoints = sorted(os.listdir(os.path.join(studio.worker.out_dir, "checkpoints")))
    errors = page.evaluate("window.studio.errors.length")
    page.evaluate(
        "messages => { for (const m of messages) window.studio.socket.send(m);"
        " window.studio.socket.send(new Uint8Array([1, 2, 3])); }",
        BAD_MESSAGES,
    )
    expected = len(BAD_MESSAGES) + 1
    page.wait_for_function(f"window.studio.errors.length >= {errors + expected}")
    shown = page.evaluate(f"window.studio.errors.slice({errors})")
    assert len(shown) == expected and all("\n" not in line for line in shown)
    assert any("patch must be" in line for line in shown)
    assert any("not a JSON" in line for line in shown)
    assert page.evaluate("window.studio.socket.readyState") == 1  # still connected
    after = view(studio)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert read_log(studio.worker.out_dir) == log
    assert sorted(os.listdir(os.path.join(studio.worker.out_dir, "checkpoints"))) == checkpoints


def test_a_flood_is_refused_and_the_page_keeps_working(page, studio):
    errors = page.evaluate("window.studio.errors.length")
    page.evaluate(
        "() => { for (let i = 0; i < 600; i++)"
        " window.studio.socket.send(JSON.stringify({type: 'member', member: null})); }"
    )
    page.wait_for_function(
        f"window.studio.errors.slice({errors}).some(e => e.includes('slow down'))"
    )
    page.wait_for_timeout(200)
    page.evaluate("window.studio.send({type: 'member', member: 1})")
    page.wait_for_function("window.studio.state.member === 1 && window.studio.state.shown === 1")
    page.evaluate("window.studio.send({type: 'member', member: null})")
    page.wait_for_function("window.studio.state.member === null")


def test_a_second_tab_sees_the_first_tabs_edit(page, studio, browser):
    other = browser.new_page(viewport={"width": 1000, "height": 700})
    other.set_default_timeout(TIMEOUT)
    try:
        other.goto(studio.url)
        settled(other, studio)
        patch, x, y = a_patch(page, studio)
        sx, sy, _ = screen_point(page, x, y)
        before = other.evaluate(f"window.studio.state.outlines[{patch}]")
        ident = next_id(page)
        page.mouse.move(sx, sy)
        page.mouse.wheel(0, -100)  # scale up by 1.1
        assert wait_reply(page, ident)["type"] == "ok"
        settled(other, studio)
        after = other.evaluate(f"window.studio.state.outlines[{patch}]")
        spread = lambda corners: np.ptp(np.asarray(corners), axis=0)  # noqa: E731
        assert not np.allclose(before, after)
        # Bigger, unless the scale was already at its bound.
        assert (spread(after) >= spread(before) - 1e-3).all()
        assert other.evaluate("window.studio.state.can_undo")
    finally:
        other.close()


def test_edit_stop_and_resume_equals_a_session_that_never_stopped(
    page, studio, resources, tmp_path
):
    """Last here: it stops the shared server."""
    patch, x, y = a_patch(page, studio)
    sx, sy, _ = screen_point(page, x, y)
    ident = next_id(page)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(sx - 30, sy + 12, steps=4)
    page.mouse.up()
    assert wait_reply(page, ident)["type"] == "ok"
    out_dir = studio.worker.out_dir
    studio.stop()
    assert not studio.worker.alive
    log = read_log(out_dir)
    assert [entry["op"] for entry in log][-1] == "move" and len(log) >= 3
    assert main(["resume", str(out_dir), "--quiet"]) == 0
    # The same edits at the same steps, without a stop: replayed, then run to the end.
    again = replay(CONFIG, log, tmp_path / "uninterrupted", resources=resources)
    again.advance(again.total_steps - again.step)
    again.export()
    resumed, _ = load_collage(os.path.join(out_dir, "params.npz"))
    uninterrupted, _ = load_collage(tmp_path / "uninterrupted" / "params.npz")
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)
