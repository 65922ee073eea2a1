"""The web chat's callbacks and layout on tiny personas (no browser: see test_chat_browser.py)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from chatbot import app
from chatbot.__main__ import is_loopback, main, parse_auth
from chatbot.engine import GenerationParams
from data_prep.errors import UserError
from pipeline.cli import run_cli
from tests.chat_helpers import chat_dirs, engine  # noqa: F401 (fixtures)

KNOBS = (0.8, 0.9, 50, 1.1, 16)
P = GenerationParams(0.8, 0.9, 50, 1.1, 16)


@pytest.fixture()
def cb(engine):
    return app.Callbacks(engine, seed=5)


def _last(gen):
    steps = list(gen)
    return steps, steps[-1]


def test_respond_streams_into_chat_and_history(cb, engine):
    steps, (box, chat, history) = _last(cb.respond("  안녕 반가워  ", [], [], "minji", *KNOBS))
    want = engine.reply([{"role": "user", "content": "안녕 반가워"}], "minji", P, seed=5)
    assert box == "" and len(steps) >= 2 and steps[0][1][-1] == {"role": "assistant", "content": ""}
    assert history == [{"role": "user", "content": "안녕 반가워"}, {"role": "assistant", "content": want}]
    assert chat == [{"role": "user", "content": "안녕 반가워"}] + app.reply_bubbles(want)


def test_single_candidate_streams(engine):
    cb = app.Callbacks(engine, seed=5)
    cb.engine = _OneCandidate(engine)
    steps, (_, chat, history) = _last(cb.respond("안녕 반가워", [], [], "minji", *KNOBS))
    partial = [s[1][-1]["content"] for s in steps[1:-1]]
    assert len(set(partial)) >= 2 and history[-1]["content"].startswith(partial[0])


class _OneCandidate:
    """The engine with candidates=1 (a streamed reply), whatever the sliders say."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, history, persona, params, seed=None):
        return self.engine.generate(history, persona, replace(params, candidates=1), seed)


def test_burst_reply_shows_one_bubble_per_line(engine):
    class Burst:
        def generate(self, history, persona, params, seed=None):
            yield "응"
            yield "응\n지금 가는 중\n\n5분만"

    cb = app.Callbacks(Burst())
    _, (_, chat, history) = _last(cb.respond("어디야?", [], [], "minji", *KNOBS))
    assert [m["content"] for m in chat] == ["어디야?", "응", "지금 가는 중", "5분만"]
    assert history[-1] == {"role": "assistant", "content": "응\n지금 가는 중\n\n5분만"}  # one turn, as trained
    _, (_, chat2, _) = _last(cb.regenerate(history, chat, "minji", *KNOBS))
    assert chat2 == chat


def test_persona_switch_applies_to_next_reply(cb, engine):
    _, (_, chat, history) = _last(cb.respond("뭐 먹을까", [], [], "minji", *KNOBS))
    _, (_, chat, history) = _last(cb.respond("배고파", history, chat, "junho", *KNOBS))
    want = engine.reply(history[:3], "junho", P, seed=5)
    assert history[-1]["content"] == want and history[1]["content"] != want
    _, (_, _, base_history) = _last(cb.respond("배고파", history[:2], chat[:2], app.BASE_CHOICE, *KNOBS))
    assert base_history[-1]["content"] == engine.reply(history[:3], None, P, seed=5)


def test_too_long_message_refused_in_chat(cb):
    _, (box, chat, history) = _last(cb.respond("가" * 1001, [], [], "minji", *KNOBS))
    assert chat[-1] == {"role": "assistant", "content": app.TOO_LONG} and history == []


def test_regenerate_and_clear(cb):
    _, (_, chat, history) = _last(cb.respond("심심해", [], [], "minji", *KNOBS))
    _, (_, chat2, history2) = _last(cb.regenerate(history, chat, "minji", *KNOBS))
    assert history2 == history  # same seed, same persona: the same reply again
    _, (_, _, history3) = _last(cb.regenerate(history, chat, "junho", *KNOBS))
    assert len(history3) == 2 and history3[1] != history[1]
    assert cb.clear() == ("", [], [])


def test_max_new_tokens_capped():
    assert app.params_from(0.8, 0.9, 50, 1.1, 10**6).max_new_tokens == 512


def test_layout_lists_personas_and_base(engine):
    demo = app.build_app(engine)
    cfg = demo.get_config_file()
    dropdown = next(c for c in cfg["components"] if c.get("props", {}).get("elem_id") == "persona")
    values = [v for _, v in dropdown["props"]["choices"]]
    assert values == ["junho", "minji", app.BASE_CHOICE]
    assert "val ppl" in dropdown["props"]["choices"][0][0]


def test_server_flags(tmp_path, capsys):
    assert run_cli(main, ["--adapters", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --adapters") and "\n" not in err
    assert run_cli(main, ["--adapters", str(tmp_path), "--auth", "nopassword"]) == 2
    assert parse_auth("me:se:cret") == ("me", "se:cret")
    with pytest.raises(UserError):
        parse_auth(":x")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.0.3")
