"""normalise stage: NFC (never NFKC), invisible characters, run capping, special tokens, 회원님 alias."""
import unicodedata
from datetime import datetime

from data_prep.normalize import NormalizeConfig, canonical_speaker, normalize, normalize_text, strip_special_tokens
from data_prep.records import Message

T = datetime(2024, 1, 1, 9, 0)


def test_nfd_becomes_nfc_and_jamo_laughter_survives():
    nfd = unicodedata.normalize("NFD", "안녕 ㅋㅋ ㅠㅠ")
    out = normalize_text(nfd)
    assert out == "안녕 ㅋㅋ ㅠㅠ"
    assert "\u110f" not in out  # NFKC would have produced conjoining ᄏ


def test_invisible_characters_and_nbsp():
    assert normalize_text("밥\u200b먹\ufeff었어\u00a0?") == "밥먹었어 ?"


def test_runs_capped_but_digits_kept():
    assert normalize_text("ㅋㅋㅋㅋㅋㅋㅋㅋ 진짜!!!!!!! 1000000원", cap_repeats=4) == "ㅋㅋㅋㅋ 진짜!!!! 1000000원"
    assert normalize_text("하하하하하하하 ㅠㅠㅠㅠㅠㅠ 😂😂😂😂😂😂 zzzzzz", cap_repeats=3) == "하하하 ㅠㅠㅠ 😂😂😂 zzzzzz"
    assert normalize_text("ㅋㅋㅋㅋㅋㅋ", cap_repeats=0) == "ㅋㅋㅋㅋㅋㅋ"


def test_special_tokens_stripped_until_stable():
    text, n = strip_special_tokens("hi <|e<|eot|>ot|> <usr></s><bos> [INST]")
    assert text.split() == ["hi"] and n == 6
    assert strip_special_tokens("<전화번호> 3 < 5")[1] == 0


def test_stage_counts_and_aliases_exporting_user():
    msgs = [Message(T, "회원님", "안녕<|eot|>"), Message(T, "You", "ㅎㅎㅎㅎㅎㅎ"), Message(T, "민수", "응")]
    out, counts = normalize(msgs, NormalizeConfig(cap_repeats=3))
    assert [(m.speaker, m.text) for m in out] == [("나", "안녕"), ("나", "ㅎㅎㅎ"), ("민수", "응")]
    assert counts["special_tokens"] == 1
    assert out[2] is msgs[2]  # unchanged messages are not rebuilt
    assert canonical_speaker("you", "me") == "me"


def test_config_validate():
    assert NormalizeConfig(cap_repeats=1).validate()
    assert not NormalizeConfig().validate()
