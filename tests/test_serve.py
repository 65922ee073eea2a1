"""The OpenAI-compatible server on tiny personas, driven by the official ``openai`` client; mixed-persona batches."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from chatbot.engine import GenerationParams
from tests.chat_helpers import chat_dirs, engine  # noqa: F401 (fixtures)

openai = pytest.importorskip("openai")

KEY = "test-key-123"
HELLO = [{"role": "user", "content": "안녕, 오늘 뭐 해?"}]
GREEDY = GenerationParams(temperature=0, max_new_tokens=12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def batcher(engine):
    from chatbot.batching import Batcher

    b = Batcher(engine, window_s=0.2)
    yield b
    b.close()


@pytest.fixture(scope="module")
def base_url(engine, batcher):
    from chatbot.serve import PersonaService, create_app, serve_in_thread

    port = _free_port()
    server = serve_in_thread(create_app(PersonaService(engine, batcher, api_key=KEY)), "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True


@pytest.fixture
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=60)


def test_models_lists_personas_and_base(client):
    assert sorted(m.id for m in client.models.list()) == ["base", "junho", "minji"]


def test_completion_is_the_engine_reply(client, engine):
    r = client.chat.completions.create(model="minji", messages=HELLO, temperature=0, max_tokens=12)
    assert r.choices[0].message.content == engine.reply(HELLO, "minji", GREEDY)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(engine.prompt_ids(HELLO, "minji", 12)) and r.usage.completion_tokens > 0
    base = client.chat.completions.create(model="base", messages=HELLO, temperature=0, max_tokens=12)
    assert base.choices[0].message.content == engine.reply(HELLO, None, GREEDY)


def test_sampled_completion_is_the_engine_reply(client, engine):
    """Same settings and seed: the chat's reply (candidates, reranking, reply shaping), whatever the batch."""
    r = client.chat.completions.create(model="junho", messages=HELLO, temperature=1.0, max_tokens=16, seed=11)
    want = engine.reply(HELLO, "junho", GenerationParams(temperature=1.0, max_new_tokens=16), seed=11)
    assert r.choices[0].message.content == want
    assert want != engine.reply(HELLO, "junho", GenerationParams(temperature=1.0, max_new_tokens=16), seed=12)


def test_stream_gives_the_same_reply(client):
    kw = dict(model="junho", messages=HELLO, temperature=1.0, max_tokens=16, seed=11)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_string_cuts_the_reply(client):
    kw = dict(model="minji", messages=HELLO, temperature=0, max_tokens=12)
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = client.chat.completions.create(stop=[stop], **kw).choices[0]
    assert cut.message.content == full[:full.find(stop)] and cut.finish_reason == "stop"
    streamed = client.chat.completions.create(stop=stop, stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut.message.content


def test_n_choices_use_consecutive_seeds(client):
    kw = dict(model="minji", messages=HELLO, temperature=1.0, max_tokens=12)
    both = client.chat.completions.create(n=2, seed=5, **kw).choices
    assert [c.index for c in both] == [0, 1]
    for i, seed in enumerate((5, 6)):
        assert both[i].message.content == client.chat.completions.create(seed=seed, **kw).choices[0].message.content
    assert both[0].message.content != both[1].message.content


def test_user_name_is_the_speaker(client, engine):
    named = [{"role": "user", "content": "안녕, 오늘 뭐 해?", "name": "영수"}]
    ids = engine.prompt_ids(named, "minji", 12)
    assert ids != engine.prompt_ids(HELLO, "minji", 12)
    assert engine.tokenizer.encode("영수", add_special_tokens=False)[0] in ids
    r = client.chat.completions.create(model="minji", messages=named, temperature=0, max_tokens=12)
    assert r.choices[0].message.content == engine.reply(named, "minji", GREEDY)


def test_wrong_key_is_refused(base_url):
    bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="minji", messages=HELLO)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nobody", messages=HELLO)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody", messages=HELLO, stream=True)


@pytest.mark.parametrize("bad", [
    dict(messages=[{"role": "assistant", "content": "hi"}]),
    dict(messages=[]),
    dict(messages=HELLO, max_tokens="lots"),
    dict(messages=[{"role": "tool", "content": "x"}]),
    dict(messages=[{"role": "user", "content": "가" * 1001}]),  # over the chat's message limit
])
def test_bad_requests_are_400(client, bad):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="minji", **bad)


def test_mixed_persona_batch_gives_each_reply_as_alone(engine, batcher):
    """Rows of different personas, prompt lengths and settings, in one batch: same tokens as alone."""
    jobs = [
        (HELLO, "minji", GenerationParams(temperature=1.0, max_new_tokens=14), 3),
        ([{"role": "user", "content": "주말에 뭐 했어? 난 영화 봤어 ㅋㅋ 재밌더라"}], "junho",
         GenerationParams(temperature=0.7, top_p=0.8, max_new_tokens=20), 4),
        (HELLO, None, GenerationParams(temperature=1.2, top_k=20, max_new_tokens=10), 5),
        (HELLO, "junho", GREEDY, None),
    ]
    alone = []
    for h, p, g, s in jobs:
        st = batcher.submit(h, p, g, seed=s)
        st.text()
        alone.append(st.token_ids)
    assert set(batcher.batch_sizes[-len(jobs):]) == {1}
    streams = [batcher.submit(h, p, g, seed=s) for h, p, g, s in jobs]  # within the batching window
    together = []
    for st in streams:
        st.text()
        together.append(st.token_ids)
    assert batcher.batch_sizes[-1] == len(jobs)
    assert together == alone
    assert len({tuple(t) for t in alone}) == len(jobs)


def test_non_loopback_host_needs_a_key(tmp_path):
    r = subprocess.run([sys.executable, "-m", "chatbot.serve", "--adapters", str(tmp_path), "--host", "0.0.0.0"],
                       capture_output=True, text=True, env={"PATH": "", "PYTHONPATH": "."}, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 is reachable from the network: set an API key "
        "(--api-key, --api-key-file or $KAKAO_PERSONA_API_KEY)"]


def test_server_imports_no_gradio():
    code = "import sys, chatbot.serve, chatbot.batching; sys.exit('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": "."}).returncode == 0


def test_api_key_sources(tmp_path):
    from chatbot.serve import resolve_api_key
    from core.errors import UserError

    f = tmp_path / "key"
    f.write_text("from-file\n", encoding="utf-8")
    assert resolve_api_key("flag", None, {"KAKAO_PERSONA_API_KEY": "env"}) == "flag"
    with pytest.raises(UserError, match="give one"):
        resolve_api_key("flag", str(f), {})
    assert resolve_api_key(None, str(f), {"KAKAO_PERSONA_API_KEY": "env"}) == "from-file"
    assert resolve_api_key(None, None, {"KAKAO_PERSONA_API_KEY": "env"}) == "env"
    assert resolve_api_key(None, None, {}) is None
    with pytest.raises(UserError):
        resolve_api_key(None, str(tmp_path / "missing"), {})


def test_any_integer_seed_is_accepted(client):
    for seed in (-5, 10**30):
        kw = dict(model="junho", messages=HELLO, temperature=1.0, max_tokens=6, seed=seed)
        first = client.chat.completions.create(**kw).choices[0].message.content
        assert first == client.chat.completions.create(**kw).choices[0].message.content
