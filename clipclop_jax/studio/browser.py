"""Where a headless Chromium is, for whatever drives the studio's page (the tests, the
benchmark, the screenshot tool): as a user's machine would find one.

``find_chromium()``: ``$CLIPCLOP_CHROMIUM``, then ``$PLAYWRIGHT_CHROMIUM_EXECUTABLE``, then
Debian's ``/usr/bin/chromium`` (or ``chromium-browser``), else None: Playwright's own
(``playwright install chromium``). ``launch(playwright)`` starts it headless.
"""

from __future__ import annotations

import os
import shutil

ENV_VARS = ("CLIPCLOP_CHROMIUM", "PLAYWRIGHT_CHROMIUM_EXECUTABLE")
SYSTEM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium() -> str | None:
    """The Chromium executable to use, or None for Playwright's own.

    Raises:
      ValueError: an environment variable names a file that is not there.
    """
    for name in ENV_VARS:
        path = os.environ.get(name)
        if path:
            if not os.path.isfile(path):
                raise ValueError(f"${name} is {path!r}, which is not a file: fix or unset it.")
            return path
    for path in SYSTEM:
        if os.path.isfile(path):
            return path
    return shutil.which("chromium")


def launch(playwright, **options):
    """A headless Chromium from a started Playwright (``sync_playwright().start()``)."""
    path = find_chromium()
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    args = ["--no-sandbox", *options.pop("args", [])]
    return playwright.chromium.launch(executable_path=path, headless=True, args=args, **options)
