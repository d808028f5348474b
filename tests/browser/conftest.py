"""Fixtures for the browser page tests: a real `scanbeam serve` on this machine's own
(non-loopback) address, Debian's chromium driven by Playwright with a phone viewport.

`make deps-browser` installs chromium (apt), the page's npm packages and builds the page;
these fixtures fail loudly if any of that is missing (they never skip).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Server, start_server, stop_server, timeout

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "build" / "browser-artifacts"


def web_dir() -> Path:
    return ROOT / "signaling" / "web"


def node_bin() -> str:
    node = shutil.which("node")
    if node is None or not (web_dir() / "node_modules").is_dir():
        raise AssertionError("node or the page's npm packages are missing: run `make deps-browser`")
    return node


def own_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("198.51.100.1", 9))  # TEST-NET-2: only selects the outgoing interface
        addr = str(s.getsockname()[0])
    if addr.startswith("127."):
        raise AssertionError("this machine has no non-loopback IPv4 address for the page tests")
    return addr


@pytest.fixture(scope="session")
def built_page() -> Path:
    dist = web_dir() / "dist"
    for name in ("index.html", "app/app.js", "app/app.css", "sw.js"):
        if not (dist / name).is_file():
            raise AssertionError(
                f"the page is not built ({dist / name} missing): run `make deps-browser`"
            )
    if not CHROMIUM.exists():
        raise AssertionError("Debian's chromium is missing: run `make deps-browser`")
    return dist


@pytest.fixture(scope="module")
def page_server(built_page: Path) -> Iterator[Server]:
    srv = start_server(["--host", own_address()])
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def browser(page_server: Server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--no-first-run",
                "--metrics-recording-only",
                # the server is on this machine's address over plain http (tests only;
                # deployments use HTTPS, README "Receiving in a browser")
                f"--unsafely-treat-insecure-origin-as-secure={page_server.url}",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        pw.stop()


@pytest.fixture
def phone(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh phone-sized page; console errors are kept on ``page.scanbeam_console``."""
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        accept_downloads=True,
    )
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    page.scanbeam_console = console
    page.set_default_timeout(timeout(60) * 1000)
    try:
        yield page
    finally:
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            sys.stderr.write("\n".join(console[-50:]) + "\n")
        context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + rep.when, rep)


def shot(page: Any, test: str, state: str) -> Path:
    """Save a screenshot of the page's current state under build/browser-artifacts/."""
    out = ARTIFACTS / test / f"{state}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    return out


def wait_state(page: Any, state: str, limit: float = 60, *, later: tuple[str, ...] = ()) -> None:
    """Wait until the page shows ``state`` (body[data-state]) or one of the ``later`` states
    it may already have passed on to; on error, say why."""
    wanted = (state, *later)
    try:
        page.wait_for_selector(
            ", ".join(f"body[data-state={s}]" for s in (*wanted, "error")),
            state="attached",
            timeout=timeout(limit) * 1000,
        )
    except Exception:
        raise AssertionError(
            f"page never reached {state!r}: state={page.evaluate('document.body.dataset.state')!r}"
            f" status={page.text_content('#status')!r} console={page.scanbeam_console[-20:]}"
        ) from None
    got = page.evaluate("document.body.dataset.state")
    if got not in wanted:
        raise AssertionError(
            f"page shows {got!r} instead of {state!r}: {page.text_content('#error-text')!r} "
            f"console={page.scanbeam_console[-20:]}"
        )


def build_page() -> None:
    """Used by bench/: builds the page like `make deps-browser` does."""
    subprocess.run(["npm", "run", "build"], cwd=web_dir(), check=True)
