"""What personal data looks like in chat text: one definition shared by the redactor and the audit.

:func:`find` returns the spans of every kind in :data:`PLACEHOLDERS` (names
are :mod:`data_prep.names`' job). The rules see a *shadow* of the text with
the same length: full-width forms (０１０, ＠) and spelled Hangul digit runs
(공일공 팔팔이일 ...) become ASCII digits there, so one set of patterns covers
them and the spans still index the original text.

Numbers are read as *runs*: digit groups joined by the separators people type
(spaces, dots, hyphens with spaces around them, en/em dash, slash, a closing
parenthesis, a line break). A run is cut into the longest pieces that fit one
kind by their group lengths and digits (phone 010-1234-5678, RRN 6+7 with a
plausible birth date, card 4-4-4-4/4-6-5/15-16 digits, driver licence 2-2-6-2,
account 10-14 digits), so times, prices, dates and counts (2시 30분, 10,000원,
2024.05.02, 3박4일) never reach a placeholder.
"""
from __future__ import annotations

import re
from typing import Callable, Iterator

PLACEHOLDERS = {
    "url": "<URL>", "email": "<이메일>", "id": "<아이디>", "rrn": "<주민번호>", "passport": "<여권번호>",
    "ip": "<IP주소>", "phone": "<전화번호>", "card": "<카드번호>", "licence": "<운전면허번호>",
    "account": "<계좌번호>", "plate": "<차량번호>", "address": "<주소>", "listed": "<이름>",
}
LISTED = "listed"  # kind of the user's own terms (--redact-list); find() does not know them
Span = tuple[int, int, str]  # start, end, kind

# ------------------------------------------------------------------ the shadow text
_WIDE = {0xFF10 + i: ord("0") + i for i in range(10)}
_WIDE.update({ord("＠"): "@", ord("．"): ".", ord("－"): "-", ord("＊"): "*", ord("／"): "/", ord("："): ":",
              ord("（"): "(", ord("）"): ")", ord("＋"): "+"})
_WIDE.update({0xFF21 + i: ord("A") + i for i in range(26)})
_WIDE.update({0xFF41 + i: ord("a") + i for i in range(26)})
_HANGUL_DIGITS = str.maketrans("공영일이삼사오육륙칠팔구", "001234566789")
# a spelled number starts with 0 (phones do: 공일공, 영일영, 공이 for Seoul) and has 8+ digits in all
_HANGUL_NUMBER = re.compile(r"[공영](?:[ \t\n\-.–—]*[0-9공영일이삼사오육륙칠팔구]){7,}")
_HANGUL_START = re.compile(r"[공영][일이삼사오육칠팔구공영][ \-일이삼사오육칠팔구공영]").search


def shadow(text: str) -> str:
    """``text`` with full-width forms and spelled digit runs as ASCII (same length, same offsets)."""
    if not text.isascii():
        text = text.translate(_WIDE)
        if _HANGUL_START(text):
            text = _HANGUL_NUMBER.sub(lambda m: m.group().translate(_HANGUL_DIGITS), text)
    return text


# ------------------------------------------------------------------ text patterns (need a letter or @)
_UNIT = r"(?![ \t]?(?:원|명|개|년|번|분|초|시|일|월|살|km|m\b|%|만|천|억|층|회|대|마리|권|장|병|잔|줄|달|주|배|등|점|위))"
_AN = "A-Za-z0-9"
_TLD = ("com|net|org|kr|me|ly|io|co|gl|gg|link|page|app|to|so|at|info|biz|xyz|site|shop|tv|be|im|kakao|naver|"
        "ai|dev|us|jp|cn|club|store|blog|gd|cc")
_URL = re.compile(
    rf"(?:https?://|www\.)[^\s<>\"']+"
    rf"|(?<![{_AN}@./_-])(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?:{_TLD})(?:\.[a-z]{{2}})?/[^\s<>\"']*",
    re.IGNORECASE)
_MAIL_DOMAIN = r"(?:[A-Za-z0-9-]+(?:[ \t]*(?:\.|닷|점)[ \t]*[A-Za-z]{2,})+|네이버|다음|한메일|지메일|구글|카카오|네이트|핫메일)"
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SPELLED_EMAIL = re.compile(  # kimyh 골뱅이 naver.com, kimyh골뱅이네이버
    rf"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+[ \t]*골뱅이?[ \t]*{_MAIL_DOMAIN}(?:[ \t]*(?:닷컴|닷넷|\.com|\.net))?")
# @handle (after e-mails are gone), or an ID named as such: 카톡 아이디 kimyh99, 인스타 kim_yh
_ID = re.compile(
    r"(?<![\w.@])@(?=[A-Za-z0-9_.]*[A-Za-z0-9])[A-Za-z0-9_][A-Za-z0-9_.]{1,29}"
    r"|(?:카톡|카카오톡|아이디|아디|인스타(?:그램)?|트위터|틱톡|페북|페이스북|디스코드|텔레그램|스냅챗|(?<![A-Za-z])(?:id|ID|Id)(?![A-Za-z]))"
    r"[ \t]*(?:아이디|아디|id|ID)?[ \t]*(?:는|은|:|=|이|가|로)?[ \t]*"
    r"(?P<v>(?=[A-Za-z0-9_.]*[A-Za-z])[A-Za-z0-9_.]{3,30})(?![A-Za-z0-9_.])")
_PASSPORT = re.compile(r"(?<![A-Za-z0-9])(?:[MSRODGmsrodg]\d{8}|[MSRODG]\d{3}[A-Z]\d{4})(?![A-Za-z0-9])")

# ------------------------------------------------------------------ number patterns (need a digit)
_MASKED = r"[*xX●○•]"
_RRN = re.compile(
    # masked (the normalise stage may have capped a run of *: 900101-1****)
    rf"(?<!\d)\d{{6}}[ \t]*[-–—]?[ \t]*[1-8*]{_MASKED}{{3,6}}(?![\d*])"
    rf"|(?:주민(?:등록)?번호|앞자리|뒷자리|앞번호|뒷번호)[^\d\n]{{0,6}}?(?P<v>\d{{6,7}}|[1-8]{_MASKED}{{3,6}})(?![\d*])")
_IP = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)")
_PLATE_LETTERS = "가나다라마거너더러머버서어저고노도로모보소오조구누두루무부수우주바사아자배하허호"
_PLATE = re.compile(rf"(?<!\d)\d{{2,3}}[ \t]?[{_PLATE_LETTERS}][ \t]?\d{{4}}(?!\d){_UNIT}")
_ADDRESS = re.compile(
    # road name: 테헤란로12길 34, 중앙로 97, 세종대로 110-3 (not 집으로 3, 학교로 2시)
    rf"[가-힣]{{2,10}}(?<![으에])(?:로|길)(?:[ \t]?\d{{1,3}}번?길)?[ \t]?\d{{1,4}}(?:[-–]\d{{1,4}})?(?![\d-]){_UNIT}"
    # lot number: 역삼동 1598-12, 신촌리 123번지
    rf"|[가-힣]{{1,8}}(?:동|리|가)[ \t]?\d{{1,5}}(?:[-–]\d{{1,5}}(?:번지)?|번지)(?!\d){_UNIT}"
    # apartment: 101동 1203호
    r"|\d{1,4}[ \t]?동[ \t]?\d{1,5}[ \t]?호")
_RUN = re.compile(r"(?<![A-Za-z0-9])\+?\(?\d+(?:(?:(?:[ \t]*[-.–—/)\n]){1,2}[ \t]*|[ \t]+)\(?\d+)*")
_GROUP = re.compile(r"\d+")
_MIN_RUN_DIGITS = 8  # the shortest number kept as PII (1588-1234)
_MOBILE = re.compile(r"01[016789]\d{7,8}")
_LANDLINE = re.compile(r"0(?:2|[3-6][1-5]|70|50\d)\d{7,8}")
_CARD_SHAPES = {(4, 4, 4, 4), (4, 6, 5), (4, 6, 4), (4, 4, 4, 3), (15,), (16,)}
_MAX_GROUPS = 5  # an account number has at most five groups (110-123-456789-01)


def _phone(d: str, lens: tuple[int, ...]) -> bool:
    if lens == (4, 4):
        return d[:2] in ("15", "16", "18")
    if len(lens) > 3 or (len(lens) > 1 and min(lens) < 2):
        return False
    return bool(_MOBILE.fullmatch(d) or _LANDLINE.fullmatch(d))


def _date_like(groups: list[str]) -> bool:
    return len(groups) > 1 and len(groups[0]) == 4 and groups[0][:2] in ("19", "20") and int(groups[1]) <= 12


def classify(groups: list[str], seps: list[str], plus: bool = False) -> str | None:
    """The kind of number that digit ``groups`` joined by ``seps`` are, or None (not personal)."""
    d, lens = "".join(groups), tuple(map(len, groups))
    if plus:  # +82 10 1234 5678, +82 (0)10-...: the national form starts with 0
        return "phone" if d.startswith("82") and _phone("0" + d[2:].lstrip("0"), (len(d),)) else None
    if _phone(d, lens):
        return "phone"
    n = len(d)
    if n == 13 and lens in ((13,), (6, 7)) and d[6] in "12345678" and 1 <= int(d[2:4]) <= 12 and 1 <= int(d[4:6]) <= 31:
        return "rrn"
    if lens == (2, 2, 6, 2):
        return "licence"
    if lens in _CARD_SHAPES:
        return "card"
    dotted = any(c in s for s in seps for c in "./)")
    mixed = len({s.strip() for s in seps}) > 1  # 1588-1234 02: two numbers, not one account
    if 10 <= n <= 14 and not dotted and not mixed and (len(lens) == 1 or min(lens) >= 2) and not _date_like(groups):
        return "account"
    return None


def _runs(text: str) -> Iterator[Span]:
    """Number spans inside each digit run: the longest piece that classifies, left to right."""
    for run in _RUN.finditer(text):
        end = run.end()
        if end < len(text) and text[end].isascii() and text[end].isalpha():
            continue  # part of a code or a hash (a3f9...), not a number someone typed
        groups = list(_GROUP.finditer(run.group()))
        if sum(g.end() - g.start() for g in groups) < _MIN_RUN_DIGITS:
            continue
        base, raw, plus = run.start(), run.group(), run.group().startswith("+")
        i = 0
        while i < len(groups):
            # digits right after a bare decimal point (8.01831421460003) are a fraction, not a number
            fraction = i > 0 and raw[groups[i - 1].end():groups[i].start()] == "."
            best = None if fraction else _best_piece(raw, groups, i, plus and i == 0)
            if best is None:
                i += 1
                continue
            j, kind = best
            yield base + (0 if plus and i == 0 else groups[i].start()), base + groups[j].end(), kind
            i = j + 1


def _best_piece(raw: str, groups: list[re.Match], i: int, plus: bool) -> tuple[int, str] | None:
    """(last group, kind) of the longest piece starting at group ``i`` that is a number of a specific
    kind, else the longest that is an account (the loosest shape: it must not swallow a phone)."""
    found = []
    for j in range(min(len(groups), i + _MAX_GROUPS) - 1, i - 1, -1):
        piece = groups[i:j + 1]
        seps = [raw[a.end():b.start()] for a, b in zip(piece, piece[1:])]
        kind = classify([g.group() for g in piece], seps, plus)
        if kind and kind != "account":
            return j, kind
        if kind:
            found.append((j, kind))
    return found[0] if found else None


def _rule(pattern: re.Pattern, kind: str) -> Callable[[str], Iterator[Span]]:
    """Spans of ``pattern``; its group ``v``, where it matched, is the part to hide."""
    has_v = "v" in pattern.groupindex

    def spans(text: str) -> Iterator[Span]:
        for m in pattern.finditer(text):
            if has_v and m.group("v") is not None:
                yield m.start("v"), m.end("v"), kind
            else:
                yield m.start(), m.end(), kind
    return spans


_has_digit = re.compile(r"[0-9]").search
# (gate, rule): a rule runs only when its gate finds what every match of it needs (most texts
# that reach find() hold a digit or a Latin letter and nothing more). Order matters: a span
# overlapping an earlier one is dropped (an e-mail's digits are not an account).
_RULES = (
    (re.compile(r"/|[wW]{3}\.").search, _rule(_URL, "url")),
    (re.compile(r"@").search, _rule(_EMAIL, "email")),
    (re.compile(r"골뱅").search, _rule(_SPELLED_EMAIL, "email")),
    (re.compile(r"@|[iI][dD]|카톡|카카오톡|아이디|아디|인스타|트위터|틱톡|페북|페이스북|디스코드|텔레그램|스냅챗").search,
     _rule(_ID, "id")),
    (re.compile(r"\d{6}").search, _rule(_RRN, "rrn")),
    (re.compile(r"[A-Za-z]\d{3}").search, _rule(_PASSPORT, "passport")),
    (re.compile(r"\d\.\d{1,3}\.\d").search, _rule(_IP, "ip")),
    (re.compile(rf"\d[\d\s\-.–—/()+]{{{_MIN_RUN_DIGITS - 2},}}\d").search, _runs),
    (re.compile(r"\d{4}").search, _rule(_PLATE, "plate")),
    (re.compile(r"[로길동리가][ \t]?\d").search, _rule(_ADDRESS, "address")),
)
# Whether find could return a span: a digit, a Latin letter or @ (all text rules need one), or a
# spelled digit run. A superset, never less; most Korean chat messages fail it at C speed.
may_hold = re.compile(r"[0-9A-Za-z@＠０-９Ａ-Ｚａ-ｚ]|[공영][일이삼사오육칠팔구공영][ \-일이삼사오육칠팔구공영]").search


def find(text: str) -> list[Span]:
    """Every personal-data span in ``text``: sorted, non-overlapping (start, end, kind)."""
    if not may_hold(text):
        return []
    s = shadow(text)
    spans: list[Span] = []
    for gate, rule in _RULES:
        if gate(s):
            for sp in rule(s):
                if not any(sp[0] < e and b < sp[1] for b, e, _ in spans):
                    spans.append(sp)
    return sorted(spans)


def term_source(term: str) -> str:
    """Regex source matching ``term`` as the redactor and the audit look for it: words of Latin
    letters and digits only as whole words (case-insensitive), anything else wherever it occurs."""
    esc = re.escape(term)
    return rf"(?<![{_AN}]){esc}(?![{_AN}])" if term.isascii() else esc


def terms_pattern(terms: list[str]) -> re.Pattern | None:
    """One case-insensitive pattern for ``terms`` (longest first), or None when there are none."""
    if not terms:
        return None
    return re.compile("|".join(term_source(t) for t in sorted(terms, key=len, reverse=True)), re.IGNORECASE)


def replace(text: str, spans: list[Span]) -> str:
    """``text`` with each span replaced by its kind's placeholder."""
    out, last = [], 0
    for start, end, kind in spans:
        out += [text[last:start], PLACEHOLDERS[kind]]
        last = end
    out.append(text[last:])
    return "".join(out)
