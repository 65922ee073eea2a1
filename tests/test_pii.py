"""PII stage: typed placeholders, pseudonyms in speaker field and text (given name, josa)."""
from collections import Counter
from datetime import datetime

from data_prep.pii import PIIConfig, Pseudonymizer, name_variants, redact_text, remove_pii, scrub
from data_prep.records import Message

T = datetime(2024, 1, 1, 9, 0)


def test_numbers_and_addresses():
    c = Counter()
    text = ("폰 010-1234-5678, +82 10 9876 5432, 집 02-345-6789, +82 (0)10-1111-2222, 메일 kim.y@naver.com, "
            "주민 900101-1234567, 카드 1234-5678-9012-3456, 계좌 110-123-456789, https://x.kr/a?b=1 www.daum.net")
    out = redact_text(text, c)
    assert out == ("폰 <전화번호>, <전화번호>, 집 <전화번호>, <전화번호>, 메일 <이메일>, 주민 <주민번호>, "
                   "카드 <카드번호>, 계좌 <계좌번호>, <URL> <URL>")
    assert c == {"phone": 4, "email": 1, "rrn": 1, "card": 1, "account": 1, "url": 2}


def test_ordinary_numbers_kept():
    c = Counter()
    for text in ("2020-06-28에 봐", "3시 15분", "1000000원", "버스 7016번", "2024.05.02 20:06", "3개(2000원) 4개(3000원)"):
        assert redact_text(text, c) == text
    assert not c


def test_pseudonyms_in_speaker_and_text():
    pseudo = Pseudonymizer(["김영희", "민수", "Alice"], personas={"민수"})
    msgs = [Message(T, "김영희", "민수야 뭐해"), Message(T, "민수", "영희야 김영희가 그랬어? alice도"),
            Message(T, "Alice", "Aliceful 010-1111-2222")]
    out, c = remove_pii(msgs, pseudo, PIIConfig())
    assert [(x.speaker, x.text) for x in out] == [
        ("친구1", "민수야 뭐해"), ("민수", "친구1야 친구1가 그랬어? 친구2도"), ("친구2", "Aliceful <전화번호>")]
    assert c == {"name": 3, "phone": 1}


def test_keep_pii_and_scrub():
    pseudo = Pseudonymizer(["김영희"], personas=set())
    msgs = [Message(T, "김영희", "010-1234-5678")]
    assert remove_pii(msgs, pseudo, PIIConfig(enabled=False))[0] == msgs
    assert scrub("line 영희: 010-1234-5678", pseudo, Counter()) == "line 친구1: <전화번호>"


def test_name_variants():
    assert name_variants("김영희") == ["김영희", "영희"]
    assert name_variants("남궁민수") == ["남궁민수", "궁민수", "민수"]
    assert name_variants("지은🌸") == ["지은🌸", "지은"]
    assert name_variants("Kim Minsu") == ["Kim Minsu", "Kim", "Minsu"]
    assert name_variants("나") == []


def test_pseudonyms_never_collide_with_real_names():
    pseudo = Pseudonymizer(["영수", "친구1", "민수"], personas={"민수"})
    assert pseudo.mapping == {"영수": "친구2", "친구1": "친구3"}


def test_prefilter_never_skips_a_text_redact_text_would_change():
    """remove_pii skips redact_text when _may_hold_pii says no: that must never hide a redaction."""
    import random

    from data_prep.pii import _may_hold_pii

    rng = random.Random(0)
    alphabet = "0123456789-. ()+@wh가 "
    texts = ["+82 10-1234-5678", "1588-1234", "02)123-4567", "a@b.co", "www.x.kr", "9001011234567", "12-34-56"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(20000)]
    changed = 0
    for t in texts:
        if redact_text(t, Counter()) != t:
            changed += 1
            assert _may_hold_pii(t), t
    assert changed > 100  # the random texts do exercise the number patterns
