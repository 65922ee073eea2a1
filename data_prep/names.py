"""Names in message text: people who are not speakers, and speakers' names written in Latin letters.

Non-speakers (:class:`PersonNames`): a cheap regex flags words shaped like a
Korean name, a surname + two given-name syllables (박서준, 김하은이랑) or two
given-name syllables + a vocative, 호칭 or the hypocoristic 이 (서준이가,
하은아, 지영씨, 민수형). Only those words go to the kiwipiepy morphological
analyser (imported on first use, each distinct word analysed once, in
batches), which keeps a word when it tags it a proper noun (NNP), or cannot
analyse it as known words (an out-of-vocabulary lump or single-syllable
fragments), and drops ordinary words (강아지, 진짜야, 최고야, 괜찮아).
Every name found gets one pseudonym for the whole run (사람1, 사람2... in
order of first appearance; 서준 and 박서준 are the same person), and every
mention of it at the start of a word (with or without a surname), alone or
before a particle, is replaced.

Latin spellings (:func:`latin_pattern`): 김지영 -> Jiyoung Kim, Kim Ji-young,
JIYEONG: a regex from the name's syllables with the usual romanisations of each.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Iterable, Iterator

# ------------------------------------------------------------------ Latin spellings of a Hangul name
_INITIAL = ["g|k", "kk|gg|k", "n", "d|t", "tt|dd", "r|l", "m", "b|p", "pp|bb", "s|sh", "ss|s", "", "j|ch",
            "jj|j", "ch", "k", "t", "p", "h"]
_VOWEL = ["a", "ae|e", "ya", "yae|ye", "eo|o|u", "e", "yeo|yo|you|yu", "ye", "o|oh", "wa", "wae|we",
          "oe|oi|we", "yo", "u|oo", "wo", "we", "wi|wee", "yu|you", "eu|u", "ui|eui|ee", "i|ee|y"]
_FINAL = ["", "k|g", "k", "k", "n", "n", "n", "t|d", "l|r", "k", "m", "l", "l", "l", "p", "l", "m", "p|b",
          "p", "t|s", "t", "ng", "t", "t", "k", "t", "p", "t"]
# surnames have fixed spellings of their own (이 -> Lee, 박 -> Park)
SURNAME_LATIN = {
    "김": "kim|gim", "이": "lee|yi|rhee|i", "박": "park|pak|bak", "최": "choi|choe", "정": "jung|jeong|chung",
    "강": "kang|gang", "조": "cho|jo", "윤": "yoon|yun", "장": "jang|chang", "임": "lim|im|yim", "한": "han",
    "오": "oh|o", "서": "seo|suh", "신": "shin|sin", "권": "kwon|gwon", "황": "hwang", "안": "ahn|an",
    "송": "song", "류": "ryu|yoo|yu", "유": "yoo|yu|you", "홍": "hong", "전": "jeon|jun|chun", "고": "ko|go",
    "문": "moon|mun", "손": "son|sohn", "양": "yang", "배": "bae|bai", "백": "baek|paik|baik", "허": "heo|huh|hur",
    "노": "noh|no|roh", "남": "nam", "심": "shim|sim", "하": "ha", "곽": "kwak|gwak", "성": "sung|seong",
    "차": "cha", "주": "joo|ju|chu", "우": "woo|wu", "구": "koo|gu|ku", "민": "min", "나": "na|ra",
    "진": "jin|chin", "지": "ji|chi", "엄": "um|eom", "채": "chae", "원": "won", "천": "cheon|chun",
    "방": "bang", "공": "kong|gong", "현": "hyun|hyeon", "함": "ham", "변": "byun|byeon", "염": "yeom|yum",
    "여": "yeo|yuh", "추": "choo|chu", "도": "do|doh", "석": "seok|suk", "선": "sun|seon", "설": "seol|sul",
    "길": "gil|kil", "연": "yeon|yun", "위": "wi|wee", "표": "pyo", "명": "myung|myeong", "기": "ki|gi",
    "반": "ban|pan", "왕": "wang", "금": "keum|geum", "옥": "ok", "인": "in", "맹": "maeng", "제": "je|jae",
    "모": "mo", "탁": "tak", "국": "kook|guk", "남궁": "namgoong|namgung", "황보": "hwangbo",
    "선우": "sunwoo|seonwoo", "제갈": "jegal", "독고": "dokgo",
}


def _syllable(ch: str) -> str:
    code = ord(ch) - 0xAC00
    ini, vow, fin = code // 588, code % 588 // 28, code % 28
    if ini == 11 and vow == 13:  # 우: woo as often as u
        head = "(?:woo|wu|u|oo)"
    else:
        head = f"(?:{_INITIAL[ini]})(?:{_VOWEL[vow]})"
    return head + (f"(?:{_FINAL[fin]})" if fin else "")


def _romanised(hangul: str) -> str:
    return "[- ]?".join(_syllable(c) for c in hangul)


def latin_pattern(name: str) -> str | None:
    """Regex source for ``name`` (Hangul, 2-5 syllables) spelt in Latin letters, either order of
    surname and given name; None for other names. Given names of one syllable are not matched alone."""
    if not re.fullmatch(r"[가-힣]{2,5}", name):
        return None
    sur = next((s for s in sorted(SURNAME_LATIN, key=len, reverse=True)
                if name.startswith(s) and 1 <= len(name) - len(s) <= 2 and len(name) >= 3), None)
    if sur is None:
        return _romanised(name)
    given, surname = _romanised(name[len(sur):]), f"(?:{SURNAME_LATIN[sur]})"
    alts = [rf"{given}[ ,]+{surname}", rf"{surname}[ ,]+{given}", rf"{surname}{given}"]
    if len(name) - len(sur) >= 2:
        alts.append(given)
    return "|".join(alts)


# ------------------------------------------------------------------ non-speakers' names
SURNAMES = "김이박최정강조윤장임한오서신권황안송류유홍전고문손양배백허노남심하곽성차주우구민"
GIVEN = ("민서지현수준우영진아윤하은예연정재도성희주승유호원태동혜상훈경채다소나빈규석인한혁선건시율찬환효"
         "용철미라린별솔슬보람온결담송빛세범기광종형명숙순옥자남일길욱완웅열택중섭식애란령리향화봄새해늘")
_AFTER_FULL = "이가|이는|이랑|이한테|이도|이를|이의|이야|이네|이|가|은|는|을|를|아|야|씨|님|도|의|랑|한테|에게|하고|와|과|언니|오빠|누나|형|선배|쌤"
_AFTER_GIVEN = "이가|이는|이랑|이한테|이도|이를|이의|이야|이네|이|아|야|씨|님|언니|오빠|누나|형|선배|쌤"
_CANDIDATE = re.compile(
    # given first: 하은아 is 하은 + vocative more often than a surname 하 + 은아
    rf"(?<![가-힣])(?:(?P<given>[{GIVEN}]{{2}})(?=(?:{_AFTER_GIVEN})(?![가-힣]))"
    rf"|(?P<full>[{SURNAMES}][{GIVEN}]{{2}})(?=(?:{_AFTER_FULL})?(?![가-힣])))")
may_hold_name = _CANDIDATE.search
_PLACE_ENDINGS = "도시군구역산"  # 강원도, 부산: a three-syllable proper noun ending so is a place
OOV_SCORE = -18.0  # kiwi scores a word it cannot analyse (a guessed noun lump) below this; known words above
_NAME_AFTER = re.compile(r"[가-힣]*")


Classifier = Callable[[list[tuple[str, int, bool]]], dict[str, bool]] | None


@lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi  # its model costs ~0.6 CPU-s to load: only once a name-shaped word turns up

    # words are analysed one at a time (a single worker); the typo, multi-word and
    # user-word dictionaries cost 1.5 CPU-s more to load and change no verdict measured here
    return Kiwi(num_workers=1, load_default_dict=False, load_typo_dict=False, load_multi_dict=False)


def warm_up() -> None:
    """Load the analyser and pay its first-call set-up (prepare runs this in its worker process)."""
    _kiwi().tokenize("서준이가")


def _fragments(tokens, length: int) -> bool:
    """Whether kiwi split the first ``length`` syllables into one-syllable nouns (it does not know the word)."""
    head = [t for t in tokens if t.start < length]
    if not head or head[-1].start + head[-1].len != length:
        return False
    return all(t.tag.startswith("NN") and t.len == 1 for t in head)


def _is_name(tokens, length: int, full: bool, word_len: int) -> bool:
    """Whether kiwi's analysis ``tokens`` of a word (``word_len`` syllables) says its first ``length``
    syllables are a name; ``full``: surname + given name."""
    t0 = tokens[0]
    if t0.start != 0:
        return False
    if t0.tag == "NNP":  # exactly the name (지영, 김철수), or a surname and fragments (박/서/준)
        return t0.len == length or (t0.len == 1 and _fragments(tokens[1:], length))
    if not full and t0.tag.startswith("NN") and t0.score < OOV_SCORE and t0.len == word_len:
        return True  # 하은아: a word kiwi cannot analyse at all, ending in a vocative or 호칭
    if _fragments(tokens, length):
        return True
    if not full and t0.tag == "NNG" and t0.len == length and len(tokens) > 1:
        nxt = tokens[1]  # 서진이한테, 하준씨: the hypocoristic 이 or 씨 (not 님: 주인님, 선생님)
        return (nxt.tag, nxt.form) in (("XSN", "이"), ("NNB", "씨"))
    return False


def classify_words(words: Iterable[tuple[str, int, bool]]) -> dict[str, bool]:
    """{word: is a name} for (word, name length, full name?) triples, each distinct word analysed once."""
    words = list(dict.fromkeys(words))
    if not words:
        return {}
    kiwi = _kiwi()
    results = [kiwi.tokenize(w) for w, _, _ in words]
    return {w: bool(toks) and not (full and w[n - 1] in _PLACE_ENDINGS) and _is_name(toks, n, full, len(w))
            for (w, n, full), toks in zip(words, results)}


class PersonNames:
    """Finds non-speakers' names in a corpus and gives each person one pseudonym (사람1, 사람2...)."""

    def __init__(self, protected: Iterable[str] = (), prefix: str = "사람"):
        """``protected``: spellings never treated as a name (personas, pseudonyms, the self alias)."""
        self.protected = set(protected)
        self.prefix = prefix
        self.mapping: dict[str, str] = {}  # spelling (given or full name) -> pseudonym
        self._pattern: re.Pattern | None = None
        self.search = lambda _: None

    def learn(self, texts: Iterable[str], classify: Classifier = None) -> None:
        """Find the names in ``texts`` (only texts the cheap regex flags reach the analyser).
        ``classify``: :func:`classify_words` or a stand-in for it (prepare runs it in its worker)."""
        found: list[tuple[str, str, int, bool]] = []  # (word, name, length, full)
        for text in texts:
            if not may_hold_name(text):
                continue
            for m in _CANDIDATE.finditer(text):
                name = m.group()
                word = name + _NAME_AFTER.match(text, m.end()).group()
                found.append((word, name, len(name), m.lastgroup == "full"))
        words = list(dict.fromkeys((w, n, f) for w, _, n, f in found))
        verdict = (classify or classify_words)(words) if words else {}
        for word, name, _, full in found:
            if verdict[word]:
                self._add(name[1:] if full else name, name if full else None)
        self._compile()

    def _add(self, given: str, full: str | None) -> None:
        if given in self.protected or (full and full in self.protected) or given.startswith(self.prefix):
            return
        pseudo = (self.mapping.get(given) or self.mapping.get(full or "")
                  or f"{self.prefix}{len(set(self.mapping.values())) + 1}")
        self.mapping.setdefault(given, pseudo)
        if full:
            self.mapping.setdefault(full, pseudo)

    def _compile(self) -> None:
        if not self.mapping:
            self._pattern, self.search = None, lambda _: None
            return
        names = sorted(self.mapping, key=len, reverse=True)
        given = "|".join(re.escape(n) for n in names if len(n) == 2)
        alts = "|".join([re.escape(n) for n in names if len(n) != 2] + ([f"[{SURNAMES}]?(?:{given})"] if given else []))
        # a known given name also with a surname in front (하은 -> 김하은), alone or before a particle
        self._pattern = re.compile(rf"(?<![가-힣])(?:{alts})(?=(?:{_AFTER_FULL})?(?![가-힣]))")
        self.search = self._pattern.search  # whether replace() would change a text

    def finditer(self, text: str) -> Iterator[re.Match]:
        """Every mention of a known name in ``text``."""
        return iter(()) if self._pattern is None else self._pattern.finditer(text)

    def replace(self, text: str) -> tuple[str, int]:
        """``text`` with every known name replaced; the number of replacements."""
        if self._pattern is None:
            return text, 0
        return self._pattern.subn(lambda m: self.mapping.get(m.group()) or self.mapping[m.group()[1:]], text)
