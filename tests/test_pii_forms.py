"""Personal data typed the way people type it, in Android Korean, PC Korean and iOS English exports:
after ``python -m pipeline.prepare`` no output file holds any of it, and report.md counts each kind."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from data_prep.formats import PARSERS
from data_prep.pii_patterns import PLACEHOLDERS
from pipeline.audit import main as audit_main
from core.cli import run_cli
from pipeline.prepare import main as prepare_main

OTHER, PERSONA, SELF = "김지영", "민수", "회원님"
# (speaker, text, needles: strings that must not survive, kind counted in stats.json)
PLANTED = [
    (OTHER, "내 번호 공일공 칠삼구사 이팔육일이야", ["칠삼구사", "이팔육일"], "phone"),
    (OTHER, "회사는 010 - 5182 - 9930 이고", ["5182", "9930"], "phone"),
    (OTHER, "새 번호 010-4471-\n6620 저장해", ["4471", "6620"], "phone"),
    (OTHER, "메일 jyk0807＠naver.com 으로", ["jyk0807"], "email"),
    (OTHER, "sunflower77 골뱅이 daum.net 로 보내", ["sunflower77"], "email"),
    (OTHER, "주민번호 앞자리 950817 뒷자리 2048153", ["950817", "2048153"], "rrn"),
    (SELF, "내 건 960324 - 1057338 야", ["960324", "1057338"], "rrn"),
    (OTHER, "서류엔 970512-2****** 이렇게", ["970512"], "rrn"),
    (OTHER, "여권 M48213907 새건 M482A3907", ["48213907", "482A3907"], "passport"),
    (OTHER, "면허번호 13 07 882140 51", ["882140"], "licence"),
    (SELF, "카드 376612345678901 로 결제해", ["376612345678901"], "card"),
    (OTHER, "계좌 3333 08 7702918 카뱅", ["7702918"], "account"),
    (OTHER, "집 서울 강남구 테헤란로12길 34 이야", ["테헤란로12길"], "address"),
    (SELF, "본가는 대구 중구 중앙로 97 근처", ["중앙로 97"], "address"),
    (OTHER, "옛날 집은 역삼동 1598-12 였어", ["1598-12"], "address"),
    (OTHER, "우리 아파트 101동 1203호로 와", ["1203호"], "address"),
    (OTHER, "서버 192.168.45.201 로 접속해", ["192.168.45.201"], "ip"),
    (OTHER, "차 번호 12가 3456 흰색", ["12가 3456"], "plate"),
    (OTHER, "인스타 @jy_kim95 팔로우해", ["jy_kim95"], "id"),
    (OTHER, "카톡 아이디 sunny0807 추가해", ["sunny0807"], "id"),
    (PERSONA, "Jiyoung Kim 이라고 영어로 써?", ["Jiyoung"], "name"),
    (OTHER, "서준이가 그러는데 박서준이랑 하은아 같이 온대", ["서준", "하은"], "person"),
    (OTHER, "naver.me/5xYzAbc bit.ly/3kQwErt 봐봐", ["5xYzAbc", "3kQwErt"], "url"),
    (OTHER, "blog.naver.com/jykimblog open.kakao.com/o/sAbCdEf", ["jykimblog", "sAbCdEf"], "url"),
    (OTHER, "toss.me/jykimtoss qr.kakaopay.com/FXyz123", ["jykimtoss", "FXyz123"], "url"),
    (OTHER, "Http://Example.com/secretpage", ["secretpage"], "url"),
    (OTHER, "Www.Daum.net/mycafe123 여기", ["mycafe123"], "url"),
    (OTHER, "콩떡이 오늘 뭐해", ["콩떡이"], "listed"),
]
BURST = [(OTHER, "010"), (OTHER, "3857"), (OTHER, "1196")]  # a number typed over three messages
EXPORTS = {
    "android_ko": lambda msgs: PARSERS["kakao_android"].write(msgs, locale="ko"),
    "windows_ko": lambda msgs: PARSERS["kakao_windows"].write(msgs),
    "ios_en": lambda msgs: PARSERS["kakao_ios"].write(msgs, locale="en"),
}


def chat() -> list:
    """One conversation per planted item, 민수 answering each; then the burst."""
    from data_prep.records import Message

    t, msgs = datetime(2024, 3, 1, 9, 0), []
    for speaker, text, _, _ in PLANTED:
        t += timedelta(hours=5)
        turns = [(speaker, text), (PERSONA, "응 알았어 ㅋㅋ"), (OTHER, "3시 30분에 봐"), (PERSONA, "그래 2시간 뒤")]
        if speaker == PERSONA:
            turns = [(OTHER, "이름 영어로 어떻게 써?"), (speaker, text), (OTHER, "응"), (PERSONA, "알겠어")]
        msgs += [Message(t + timedelta(minutes=k), s, x) for k, (s, x) in enumerate(turns)]
    t += timedelta(hours=5)
    msgs += [Message(t + timedelta(seconds=10 * k), s, x) for k, (s, x) in enumerate(BURST + [(PERSONA, "저장!")])]
    return msgs


def all_text(out: Path) -> str:
    """Every output file as text, JSON string escapes decoded (a number split by \\n stays visible)."""
    parts = []
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.suffix != ".png":
            text = p.read_bytes().decode("utf-8", "replace")
            parts += [text, text.replace("\\n", "\n")]
    return "\n".join(parts)


@pytest.mark.parametrize("fmt", sorted(EXPORTS))
def test_every_planted_item_is_gone_from_every_output(fmt, tmp_path, capsys):
    src = tmp_path / f"KakaoTalk_{fmt}.txt"
    src.write_text(EXPORTS[fmt](chat()), encoding="utf-8")
    terms = tmp_path / "mine.txt"
    terms.write_text("# my nicknames\n콩떡이\n", encoding="utf-8")
    out = tmp_path / "data"
    assert run_cli(prepare_main, [str(src), "--out", str(out), "--persona", PERSONA, "--redact-list", str(terms)]) == 0
    blob = all_text(out) + capsys.readouterr().err
    left = [n for _, _, needles, _ in PLANTED for n in needles if n in blob]
    left += [n for n in ("3857", "1196") if n in blob]
    assert not left, left
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    kinds = {k for _, _, _, k in PLANTED}
    assert kinds <= set(stats["redactions"]), kinds - set(stats["redactions"])
    report = (out / "report.md").read_text(encoding="utf-8")
    for kind in kinds:
        shown = {"name": "친구N (speakers)", "person": "사람N (other people)"}.get(kind) or PLACEHOLDERS[kind]
        assert f"| {kind} | {shown} | {stats['redactions'][kind]} |" in report, kind
    assert "3시 30분에 봐" in blob and "그래 2시간 뒤" in blob  # ordinary numbers survive
    assert run_cli(audit_main, [str(out)]) == 0
