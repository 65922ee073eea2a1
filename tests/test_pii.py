"""PII stage: typed placeholders, pseudonyms in speaker field and text (given name, josa)."""
from collections import Counter
from datetime import datetime

import pytest

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


# --- every row of issue 14's table, as people type it ------------------------------------------

FORMS = [  # (text, expected after redaction)
    ("공일공 팔팔이일 삼사오육 으로 해", "<전화번호> 으로 해"),
    ("공일공-1234-5678", "<전화번호>"),
    ("010 - 1234 - 5678 이야", "<전화번호> 이야"),
    ("번호 010-1234-\n5678 저장", "번호 <전화번호> 저장"),
    ("010–1234–5678 010/1234/5678 010.1234.5678", "<전화번호> <전화번호> <전화번호>"),
    ("１５８８-１２３４ 로 전화", "<전화번호> 로 전화"),
    ("kim＠naver.com", "<이메일>"),
    ("kimyh 골뱅이 naver.com 으로", "<이메일> 으로"),
    ("앞자리 900101 뒷자리 1234567", "앞자리 <주민번호> 뒷자리 <주민번호>"),
    ("900101 - 1234567", "<주민번호>"),
    ("900101-1****** 야", "<주민번호> 야"),
    ("여권 M12345678 새 여권 M123A4567", "여권 <여권번호> 새 여권 <여권번호>"),
    ("면허 13 07 882140 51", "면허 <운전면허번호>"),
    ("면허 13-07-882140-51", "면허 <운전면허번호>"),
    ("카드 371234567890123", "카드 <카드번호>"),
    ("계좌 110 123 456789", "계좌 <계좌번호>"),
    ("테헤란로12길 34 이고 중앙로 97", "<주소> 이고 <주소>"),
    ("역삼동 1598-12", "<주소>"),
    ("101동 1203호", "<주소>"),
    ("192.168.0.12 로 접속", "<IP주소> 로 접속"),
    ("차 12가 3456 이야", "차 <차량번호> 이야"),
    ("인스타 @kim_yh 카톡 아이디 kimyh99", "인스타 <아이디> 카톡 아이디 <아이디>"),
    ("naver.me/abc bit.ly/xyz blog.naver.com/kim", "<URL> <URL> <URL>"),
    ("open.kakao.com/o/sAbc toss.me/kim qr.kakaopay.com/FXabc", "<URL> <URL> <URL>"),
    ("Http://Example.com Www.Daum.net", "<URL> <URL>"),
]


@pytest.mark.parametrize("text,want", FORMS)
def test_every_form_of_the_table(text, want):
    assert redact_text(text, Counter()) == want


ORDINARY = ["2020-06-28에 봐", "3시 15분", "2시 30분", "1000000원", "10,000원이야", "버스 7016번", "2024.05.02 20:06",
            "3개(2000원) 4개(3000원)", "3박4일", "ㅋㅋㅋㅋ", "2024년 5월 2일 오후 8시", "집으로 3시까지 와", "학교로 2개",
            "2024 05 02 20 06", "1 2 3 4 5 6 7 8 9 10", "수영이야", "영이 삼촌", "공사 중", "7시 반에 101번 버스",
            "오늘 18000원 썼어", "키 175 몸무게 65", "id 어떻게 만들어?", "www 이게 뭐야", "3/4 정도", "12월 25일",
            "원주율 3.14159265358979", "loss 8.01831421460003", "우리 3-4명이서 가", "내가 2-3개 살게",
            "그걸로 10분 기다려", "거리 1-2km 정도"]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_chat_is_kept(text):
    c = Counter()
    assert redact_text(text, c) == text and not c


def test_number_over_a_burst_of_messages_is_hidden_in_every_piece():
    pseudo = Pseudonymizer(["영희"], personas=set())
    msgs = [Message(T, "영희", "내 번호"), Message(T, "영희", "010"), Message(T, "영희", "1234"), Message(T, "영희", "5678"),
            Message(T, "민수", "3"), Message(T, "민수", "4")]
    out, c = remove_pii(msgs, pseudo, PIIConfig(person_names=False))
    assert [m.text for m in out] == ["내 번호", "<전화번호>", "<전화번호>", "<전화번호>", "3", "4"]
    assert c["phone"] == 1
    spelled = [Message(T, "영희", "공일공"), Message(T, "영희", "팔팔이일"), Message(T, "영희", "삼사오육")]
    out, c = remove_pii(spelled, pseudo, PIIConfig(person_names=False))
    assert [m.text for m in out] == ["<전화번호>"] * 3 and c == {"phone": 1}


def test_redact_list_and_latin_spelling_of_a_speaker():
    pseudo = Pseudonymizer(["김지영", "민수"], personas={"민수"}, redact=["콩떡이", "Hanbit High"])
    msgs = [Message(T, "민수", "Jiyoung Kim 이랑 kim ji-young 그리고 JIYEONG, 콩떡이 hanbit high 다녀"),
            Message(T, "김지영", "Minsu 안녕")]
    out, c = remove_pii(msgs, pseudo, PIIConfig(person_names=False))
    assert out[0].text == "친구1 이랑 친구1 그리고 친구1, <이름> <이름> 다녀"
    assert out[1].text == "Minsu 안녕"  # the persona keeps its name
    assert c == {"name": 3, "listed": 2}


def test_read_redact_list(tmp_path):
    from data_prep.pii import read_redact_list

    path = tmp_path / "mine.txt"
    path.write_text("\ufeff# me\n이도현\n\n 콩떡이 \n이도현\n", encoding="utf-8")
    assert read_redact_list(str(path)) == ("이도현", "콩떡이")


def test_people_who_are_not_speakers_get_one_pseudonym_each():
    pseudo = Pseudonymizer(["김영희", "민수"], personas={"민수"})
    msgs = [Message(T, "김영희", "서준이가 그러는데 하은아 들었어?"), Message(T, "민수", "박서준이랑 김하은 왔어"),
            Message(T, "김영희", "지영씨 괜찮아 고양이가 진짜야"), Message(T, "민수", "서준 왔어? 민수야 영희야 나는 몰라"),
            Message(T, "김영희", "지원아 지원해줘 강아지 산책")]
    out, c = remove_pii(msgs, pseudo, PIIConfig())
    assert [m.text for m in out] == [
        "사람1이가 그러는데 사람2아 들었어?", "사람1이랑 사람2 왔어", "사람3씨 괜찮아 고양이가 진짜야",
        "사람1 왔어? 민수야 친구1야 나는 몰라", "사람4아 지원해줘 강아지 산책"]
    assert c == {"person": 7, "name": 1}
