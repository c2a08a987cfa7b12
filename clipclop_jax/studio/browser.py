"""Where a headless Chromium is, for whatever drives the studio's page (the tests, the
benchmark, the screenshot tool): as a user's machine would find one.

``find_chromium()``: ``$CLIPCLOP_CHROMIUM``, then ``$PLAYWRIGHT_CHROMIUM_EXECUTABLE``, then
Debian's ``/usr/bin/chromium`` (or ``chromium-browser``), else None: Playwright's own
(``playwright install chromium``). ``launch(playwright)`` starts it headless.

``python -m clipclop_jax.studio.browser [--install]`` says which Chromium that is; with
``--install`` and none found, installs one: Debian's package as root where apt-get exists
(Playwright's own download is blocked on some networks that reach the package mirrors),
otherwise Playwright's build. README's test command runs it first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

ENV_VARS = ("CLIPCLOP_CHROMIUM", "PLAYWRIGHT_CHROMIUM_EXECUTABLE")
SYSTEM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
PLAYWRIGHTS_OWN = "Playwright's own (playwright install chromium)"


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


def install_chromium() -> None:
    """Install a Chromium for Playwright: Debian's as root with apt-get, else Playwright's."""
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True)
    else:
        subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Which Chromium the studio's page tests use.")
    parser.add_argument("--install", action="store_true", help="install one when none is found")
    options = parser.parse_args(argv)
    path = find_chromium()
    if path is None and options.install:
        install_chromium()
        path = find_chromium()
    print(f"chromium: {path or PLAYWRIGHTS_OWN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
