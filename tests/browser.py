"""Headless Chromium for the report's browser tests: Debian's ``chromium`` driven by Playwright, offline.

The tests never skip: without the browser they fail, saying how to install it. Every page is opened from
``file://`` in a context whose network is blocked: each request that is not a ``file:``, ``data:`` or ``blob:``
URL is recorded and aborted, so a test can assert the page attempted none and still drew every panel.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

# the flags this closed network needs (we may run as root: no sandbox); no GPU, no background traffic
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL = ("file:", "data:", "blob:")


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        pytest.fail("the report's browser tests need Debian's chromium: apt-get install chromium "
                    "(sudo apt-get install chromium when not root); .ci/run installs it", pytrace=False)
    return found


@contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless Chromium (closed on exit)."""
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the report's browser tests need playwright: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageLog:
    """What a page did: requests that left the machine (blocked), console messages, uncaught errors."""

    requests: list[str] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return ([f"network request: {r}" for r in self.requests]
                + [f"console {kind}: {text}" for kind, text in self.console if kind in ("error", "warning")]
                + [f"page error: {e}" for e in self.errors])


@contextmanager
def offline_page(browser: Any, path: Path, viewport=(1400, 1000)) -> Iterator[tuple[Any, PageLog]]:
    """``path`` opened from file:// with the network blocked; waits until the page says it is drawn."""
    log = PageLog()
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})

    def route(r) -> None:
        url = r.request.url
        if url.startswith(LOCAL):
            r.continue_()
        else:
            log.requests.append(url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: log.console.append((m.type, m.text)))
    page.on("pageerror", lambda e: log.errors.append(str(e)))
    try:
        page.goto(Path(path).resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        yield page, log
    finally:
        context.close()
