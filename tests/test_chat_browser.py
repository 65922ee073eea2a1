"""The web chat in a real headless Chromium: pick a persona, watch a Korean reply stream, switch, reply again.

Needs Debian's ``chromium`` (/usr/bin/chromium). In CI (CI=true) a missing browser fails
the test; elsewhere it is skipped. A screenshot goes to ``test-artifacts/chat_browser.png``.
"""
from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from chatbot import app
from chatbot.engine import GenerationParams
from tests.chat_helpers import chat_dirs, engine  # noqa: F401 (fixtures)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SEED = 21
pytestmark = pytest.mark.browser


class PacedEngine:
    """The real engine with a pause between streamed pieces, so the page can be seen mid-reply
    (the tiny model writes a whole reply faster than the browser polls)."""

    def __init__(self, engine, pause: float):
        self._engine, self._pause = engine, pause

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, history, persona, params, seed=None):
        # one candidate: the reply streams token by token from its first token
        for text in self._engine.generate(history, persona, replace(params, candidates=1), seed):
            time.sleep(self._pause)
            yield text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hangul(text: str) -> str:
    # compare by Hangul only: markdown rendering may drop symbols and fold spaces
    return re.sub(r"[^가-힣]", "", text)


@pytest.fixture(scope="module")
def server(engine):
    if not CHROMIUM.exists():
        msg = f"{CHROMIUM} not installed: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    port = _free_port()
    demo = app.launch(PacedEngine(engine, 0.04), host="127.0.0.1", port=port, block=False, seed=SEED)
    yield f"http://127.0.0.1:{port}"
    demo.close()


@pytest.fixture()
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
        pg = browser.new_page(viewport={"width": 1100, "height": 1000})
        # hermetic: anything not served by the app (web fonts...) is refused at once
        pg.route("**/*", lambda r: r.continue_() if r.request.url.startswith(server) else r.abort())
        pg.goto(server, wait_until="domcontentloaded")
        pg.wait_for_selector("#message textarea", timeout=30_000)
        yield pg
        browser.close()


def _pick(pg, name: str) -> None:
    pg.click("#persona input")
    pg.get_by_role("option", name=name).click()


def _send_and_watch(pg, text: str, want: str, timeout: float = 60) -> list[str]:
    """Send ``text``; return the distinct states of the newest bot message until it equals ``want``."""
    n_before = pg.locator("#chat [data-testid=bot]").count()
    pg.fill("#message textarea", text)
    pg.press("#message textarea", "Enter")
    states: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bots = pg.locator("#chat [data-testid=bot]")
        if bots.count() > n_before:
            seen = bots.last.inner_text().strip()
            if seen and (not states or seen != states[-1]):
                states.append(seen)
            if _hangul(seen) == _hangul(want):
                return states
        time.sleep(0.02)
    raise AssertionError(f"reply never matched; last states {states[-3:]}, wanted {want!r}")


def test_pick_persona_stream_switch_and_reply_again(page, engine):
    defaults = GenerationParams(candidates=1)
    first = [{"role": "user", "content": "안녕! 오늘 저녁 뭐 먹을까?"}]
    want1 = engine.reply(first, "minji", defaults, seed=SEED)
    second = first + [{"role": "assistant", "content": want1}, {"role": "user", "content": "떡볶이 어때?"}]
    want2 = engine.reply(second, "junho", defaults, seed=SEED)
    assert _hangul(want1) and _hangul(want2) and _hangul(want1) != _hangul(want2)

    _pick(page, "minji")
    states = _send_and_watch(page, first[0]["content"], want1)
    partial = [s for s in states if _hangul(s) != _hangul(want1)]
    assert len(set(partial)) >= 2, f"reply did not stream: {states}"
    assert all(_hangul(want1).startswith(_hangul(s)) for s in partial)

    _pick(page, "junho")  # the conversation goes on with the other persona
    _send_and_watch(page, second[-1]["content"], want2)
    assert page.locator("#chat [data-testid=user]").count() == 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_browser.png"), full_page=True)
