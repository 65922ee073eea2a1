"""The web chat's callbacks and layout on tiny personas (no browser: see test_chat_browser.py)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from chatbot import app
from chatbot.__main__ import AUTH_ENV, main, parse_auth, resolve_auth
from chatbot.access import is_loopback
from chatbot.engine import GenerationParams
from core.cli import run_cli
from core.errors import UserError
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


def test_network_without_a_login_is_refused(tmp_path, capsys, monkeypatch):
    """Listening beyond loopback, or --share, needs a login; the refusal is one line, before any model loads."""
    monkeypatch.delenv(AUTH_ENV, raising=False)
    missing = str(tmp_path / "missing")  # reaching the --adapters check means the login check passed
    for flags in (["--host", "0.0.0.0"], ["--host", "192.168.0.3"], ["--share"]):
        assert run_cli(main, ["--adapters", missing, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"error: {flags[0]}") and "--auth" in err, err
    login = tmp_path / "login"
    login.write_text("me:secret\n", encoding="utf-8")
    for flags in (["--host", "0.0.0.0", "--auth", "me:secret"], ["--share", "--auth-file", str(login)],
                  ["--host", "0.0.0.0", "--no-auth"], ["--host", "::1"]):
        assert run_cli(main, ["--adapters", missing, *flags]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --adapters"), flags
    monkeypatch.setenv(AUTH_ENV, "me:secret")
    assert resolve_auth(None, None) == ("me", "secret")
    assert run_cli(main, ["--adapters", missing, "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --adapters")
    monkeypatch.setenv(AUTH_ENV, "nopassword")
    with pytest.raises(UserError, match=AUTH_ENV):
        resolve_auth(None, None)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        resolve_auth(None, str(empty))


class ScriptedEngine:
    """Streams a fixed reply in two pieces; records the history it was given."""

    def __init__(self, reply: str):
        self.reply, self.seen = reply, []

    def generate(self, history, persona, params, seed=None):
        self.seen.append(list(history))
        yield self.reply[: len(self.reply) // 2]
        yield self.reply


def test_replies_show_as_plain_text_not_html():
    reply = '<img src=x onerror="alert(1)"> <a href="http://evil.example">클릭</a> & [링크](http://x.example)'
    cb = app.Callbacks(ScriptedEngine(reply))
    _, (_, chat, history) = _last(cb.respond("<b>안녕</b>", [], [], "minji", *KNOBS))
    assert history[-1]["content"] == reply and history[0]["content"] == "<b>안녕</b>"  # the model sees the text
    shown = chat[-1]["content"]
    assert "<" not in shown and shown.startswith("&lt;img src=x") and "&amp;" in shown
    assert chat[0]["content"] == "&lt;b&gt;안녕&lt;/b&gt;"
    # what the Chatbot sends to the page: no tag survives
    import gradio as gr

    sent = gr.Chatbot(render_markdown=False).postprocess(chat)
    assert all("<" not in str(m.content) for m in sent.root)
    _, (_, chat2, _) = _last(cb.regenerate(history, chat, "minji", *KNOBS))
    assert chat2 == chat


def test_history_kept_per_session_is_capped():
    engine = ScriptedEngine("응")
    cb = app.Callbacks(engine)
    long = [{"role": r, "content": str(i)} for i in range(60) for r in ("user", "assistant")]
    _, (_, chat, history) = _last(cb.respond("또", long, long, "minji", *KNOBS))
    assert len(history) <= app.MAX_HISTORY and len(chat) <= app.MAX_HISTORY
    assert len(engine.seen[-1]) < app.MAX_HISTORY and engine.seen[-1][0]["role"] == "user"
    assert history[-2:] == [{"role": "user", "content": "또"}, {"role": "assistant", "content": "응"}]


def test_one_reply_at_a_time_per_session():
    cb = app.Callbacks(ScriptedEngine("천천히 답할게"))
    first = cb.respond("하나", [], [], "minji", *KNOBS, session="a")
    next(first), next(first)  # streaming now
    _, (_, chat, history) = _last(cb.respond("둘", [], [], "minji", *KNOBS, session="a"))
    assert chat[-1]["content"] == app.BUSY and history == []
    _, (_, _, other) = _last(cb.respond("셋", [], [], "minji", *KNOBS, session="b"))  # another session is served
    assert other[-1]["content"] == "천천히 답할게"
    list(first)  # the first reply ends: the session may send again
    _, (_, _, again) = _last(cb.respond("넷", [], [], "minji", *KNOBS, session="a"))
    assert again[-1]["content"] == "천천히 답할게"
