"""The demo page in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import require

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(CHROMIUM is not None, "Debian's chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        require(False, "playwright is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_the_demo_page_streams_asks_permission_and_resumes(
    server: str, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server}/#browser-session")
    page.wait_for_selector(".status-connected")

    message = "Streaming into a real browser, one coalesced frame at a time."
    page.fill("[data-testid=message]", message)
    page.fill("#deltas", "30")
    page.fill("#interval", "15")
    page.check("[data-testid=permission-toggle]")
    page.click("[data-testid=send]")

    page.wait_for_selector(".msg.agent.streaming")  # text arriving, cursor blinking
    page.wait_for_selector(".msg.agent[data-complete=true]")
    assert message == page.inner_text(".msg.agent")
    page.wait_for_selector("[data-testid=permission] [data-testid=allow]")
    page.screenshot(path=str(tmp_path / "permission.png"))
    page.click("[data-testid=permission] [data-testid=allow]")
    page.wait_for_selector(".card.tool[data-result=allowed]")
    page.wait_for_selector(".event-line:has-text('complete')")
    page.screenshot(path=str(tmp_path / "complete.png"))

    # Drop the socket, stream while the page is away, and watch it resume.
    page.evaluate("window.sessionfanoutDemo.client.ws.close()")
    page.wait_for_selector(".status-reconnecting")
    second = "Written while the page was reconnecting."
    response = httpx.post(
        f"{server}/api/sessions/browser-session/messages",
        json={"message": second, "deltas": 10, "deltaIntervalMs": 5, "tool": False},
    )
    assert 202 == response.status_code
    page.wait_for_selector(".status-connected", timeout=15_000)
    page.wait_for_function(
        "document.querySelectorAll('.msg.agent[data-complete=true]').length == 2"
    )
    texts = page.locator(".msg.agent").all_inner_texts()
    assert [message, second] == texts, "resumed without a gap or a duplicate"
    assert 2 == page.locator(".event-line:has-text('complete')").count()
    page.screenshot(path=str(tmp_path / "resumed.png"))
    shots = os.environ.get("SESSIONFANOUT_SCREENSHOTS")
    if shots:  # keep a copy for a person to look at
        shutil.copy(tmp_path / "resumed.png", shots)
    assert (tmp_path / "resumed.png").stat().st_size > 10_000
    assert [] == errors
    page.close()


def test_the_theme_button_reaches_every_open_page(server: str, browser: Any) -> None:
    pages = [browser.new_page() for _ in range(2)]
    for page in pages:
        page.goto(f"{server}/")
        page.wait_for_selector(".status-connected")
    before = [page.evaluate("document.documentElement.dataset.theme") for page in pages]
    pages[0].click("#theme")
    for page, theme in zip(pages, before, strict=True):
        flipped = "dark" if theme == "light" else "light"
        page.wait_for_function(f"document.documentElement.dataset.theme == '{flipped}'")
        page.close()


def test_pages_on_one_session_see_how_many_watch_it(server: str, browser: Any) -> None:
    pages = [browser.new_page() for _ in range(2)]
    for page in pages:
        page.goto(f"{server}/#presence-session")
        page.wait_for_selector(".status-connected")
    for page in pages:
        page.wait_for_function("document.querySelector('#watching').textContent == '2 watching'")
    pages[1].close()
    pages[0].wait_for_function("document.querySelector('#watching').textContent == '1 watching'")
    pages[0].close()


def test_the_demo_page_on_server_sent_events_streams_answers_and_resumes_by_itself(
    server: str, browser: Any, tmp_path: Path
) -> None:
    """The browser's own EventSource: cut every stream, and it reconnects with
    Last-Event-ID; the text written meanwhile arrives with no gap."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server}/?transport=sse#sse-browser-session")
    page.wait_for_selector(".status-connected")
    assert "sse" == page.eval_on_selector("[data-testid=transport]", "s => s.value")

    message = "Streaming over Server-Sent Events into a real browser."
    page.fill("[data-testid=message]", message)
    page.fill("#deltas", "20")
    page.fill("#interval", "10")
    page.check("[data-testid=permission-toggle]")
    page.click("[data-testid=send]")
    page.wait_for_selector(".msg.agent[data-complete=true]")
    page.click("[data-testid=permission] [data-testid=allow]")  # answered by POST
    page.wait_for_selector(".card.tool[data-result=allowed]")
    page.wait_for_selector(".event-line:has-text('complete')")

    assert 200 == httpx.post(f"{server}/api/test/close-streams", timeout=10).status_code
    second = "Written while the stream was cut."
    response = httpx.post(
        f"{server}/api/sessions/sse-browser-session/messages",
        json={"message": second, "deltas": 10, "deltaIntervalMs": 5, "tool": False},
        timeout=10,
    )
    assert 202 == response.status_code
    page.wait_for_function(
        "document.querySelectorAll('.msg.agent[data-complete=true]').length == 2",
        timeout=15_000,
    )
    texts = page.locator(".msg.agent").all_inner_texts()
    assert [message, second] == texts, "resumed by Last-Event-ID, no gap, no duplicate"
    assert 2 == page.locator(".event-line:has-text('complete')").count()
    page.screenshot(path=str(tmp_path / "sse.png"))
    assert [] == errors
    page.close()
