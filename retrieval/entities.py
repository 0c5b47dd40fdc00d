"""Entity awareness: which entity (hotel, restaurant, product, ...) a conversation is about.

The knowledge base names its entities (``metadata["entity_name"]``, or short document titles).
``EntityMatcher`` is built once per index snapshot; ``current(texts)`` scans the conversation
(user and agent turns: agents often name the hotel) and returns the entity it is about now.

Matching works on normalised word sequences (lower case, "&" -> "and", "guesthouse" -> "guest
house", "b&b" -> "bed and breakfast", apostrophes dropped), so "the Allenbell", "A and B guest
house", "Hobson's House" and "arbury lodge guesthouse" all match. Besides its full name, an
entity gets weaker *aliases*: its name without generic words ("hobsons" for HOBSONS HOUSE,
"belfry" for THE CAMBRIDGE BELFRY) and other parts of its name. A one-word alias that the
knowledge base uses about several other entities ("worth", "king", "bridge") is too common to
count. A part shared by several names ("pizza hut") is an ambiguous mention: it resolves to the
one of them named earlier, or else stays a group. Unknown words of 5+ letters also match a
distinctive name word with one typo ("allenbel").

Each mention has a strength (full name 1.0 > core alias > other part > typo); the conversation is
about the mention with the best ``strength * decay ** turns_back`` (ties: the later one), so a
full name two turns ago beats a weak partial word in the last turn, and a name in the last turn
beats everything older. ``decay`` was chosen on DSTC11 train dialogues; on dev knowledge-seeking
turns the matcher finds the gold entity almost always, more often than "the exact name mentioned
last" would (bench/tune_entities.py; figures in the README).
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

# Words that say what a place is rather than which one it is, and English stopwords:
# never an alias on their own.
GENERIC = ENGLISH_STOP_WORDS | frozenset(
    """the a an of and at in on by for to restaurant restaurants hotel hotels house guest guesthouse
    lodge bar bed breakfast cafe cafeteria bistro brasserie pizzeria kitchen grill steakhouse inn
    cambridge city centre center north south east west town place shop takeaway food family
    chinese indian italian thai french british european asian japanese korean mexican spanish
    portuguese lebanese turkish vietnamese international modern gastropub fusion noodle noodles
    pizza curry tandoori coffee wine express garden golden royal little new old one two three
    home star good best great lucky free cheap moderate expensive road street""".split()
)

FULL, CORE, PART, TYPO = 1.0, 0.9, 0.6, 0.5  # mention strengths

_APOS = re.compile(r"['’`]")
_WORDS = re.compile(r"[a-z0-9]+")
# Canonical spellings, applied to names and conversation text alike (on the joined token string).
_CANON = [
    (re.compile(r"\bguesthouses?\b"), "guest house"),
    (re.compile(r"\b(?:b and b|b n b|bnb)\b"), "bed and breakfast"),
    (re.compile(r"\bcentre\b"), "center"),
]


def normalise(text: str) -> list[str]:
    """Lower-cased word tokens with canonical spellings (see module docstring)."""
    text = _APOS.sub("", text.lower()).replace("&", " and ")
    joined = " ".join(_WORDS.findall(text))
    for pattern, repl in _CANON:
        joined = pattern.sub(repl, joined)
    return joined.split()


def _one_edit(a: str, b: str) -> bool:
    """True when a and b differ by at most one insertion, deletion or substitution."""
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la > lb:
        a, b, la, lb = b, a, lb, la
    i = 0
    while i < la and a[i] == b[i]:
        i += 1
    return a[i + 1:] == b[i + 1:] if la == lb else a[i:] == b[i + 1:]


@dataclass(frozen=True)
class Mention:
    """Entities named at one place of the conversation. ``names`` has one entity, or several
    when the words used are shared by several names ("pizza hut"). ``turn`` counts back from the
    newest text (0 = the query itself)."""

    names: tuple[str, ...]
    turn: int
    position: int
    strength: float


class EntityMatcher:
    """Finds entity mentions in conversation text. Built once per snapshot.

    ``names``: the entity names. ``texts``: optional ``{name: [texts about it]}`` (the chunks of
    each entity); with it, one-word aliases used in the texts of more than ``common_entities``
    other entities are dropped, and typo matching skips words the knowledge base uses.
    ``exact_only``: names matched only in full (no aliases), e.g. names taken from document
    titles, which are often phrases ("Returns and refunds") rather than proper names.
    """

    def __init__(
        self,
        names: Iterable[str],
        texts: Mapping[str, Iterable[str]] | None = None,
        decay: float = 0.7,
        common_entities: int = 2,
        cache_size: int = 4096,
        exact_only: Iterable[str] = (),
    ):
        self.names = list(dict.fromkeys(n for n in names if n and n.strip()))
        exact_only = frozenset(exact_only)
        self.decay = decay
        users: dict[str, set[str]] = {}  # word -> entities whose texts use it
        for name, entity_texts in (texts or {}).items():
            for text in entity_texts:
                for w in set(normalise(text)):
                    users.setdefault(w, set()).add(name)
        self._known_words = frozenset(users)

        def common(word: str, owners: set[str]) -> bool:
            return len(users.get(word, set()) - owners) > common_entities

        # phrase -> (owner names, strength); a stronger entry for the same phrase wins.
        phrases: dict[tuple[str, ...], tuple[frozenset[str], float]] = {}

        def put(gram: tuple[str, ...], owners: set[str], strength: float) -> None:
            old = phrases.get(gram)
            if old is None or strength > old[1]:
                phrases[gram] = (frozenset(owners), strength)
            elif strength == old[1]:
                phrases[gram] = (old[0] | owners, strength)

        grams: dict[tuple[str, ...], set[str]] = {}
        cores: dict[tuple[str, ...], set[str]] = {}
        for name in self.names:
            toks = normalise(name)
            if not toks:
                continue
            put(tuple(toks), {name}, FULL)
            if toks[0] == "the" and len(toks) > 1:
                put(tuple(toks[1:]), {name}, FULL)
            if name in exact_only:
                continue
            core = [t for t in toks if t not in GENERIC]
            if core and len(core) < len(toks):
                cores.setdefault(tuple(core), set()).add(name)
            for i in range(len(toks)):
                for j in range(i + 1, len(toks) + 1):
                    gram = tuple(toks[i:j])
                    if any(t not in GENERIC and len(t) > 1 and not t.isdigit() for t in gram):
                        grams.setdefault(gram, set()).add(name)
        for gram, owners in cores.items():
            if len(gram) == 1 and common(gram[0], owners):
                continue
            put(gram, owners, CORE)
        for gram, owners in grams.items():
            if gram[0] in GENERIC and gram[-1] in GENERIC:
                continue  # "city centre", "the golden curry house": no distinctive word at an end
            if len(gram) == 1 and common(gram[0], owners):
                continue
            put(gram, owners, PART)
        self._phrases = phrases
        self.max_len = max((len(g) for g in phrases), default=0)
        # Typo tolerance only for distinctive words of a single entity ("allenbell").
        self._typo_words: dict[str, list[str]] = {}
        for gram, (owners, strength) in phrases.items():
            w = gram[0]
            if len(gram) == 1 and len(w) >= 5 and len(owners) == 1 and strength >= CORE:
                self._typo_words.setdefault(w[:2], []).append(w)
        self._cache: OrderedDict[str, list[tuple[int, tuple[str, ...], float]]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()  # retrievers share one matcher across threads

    def __len__(self) -> int:
        return len(self.names)

    def _scan(self, text: str) -> list[tuple[int, tuple[str, ...], float]]:
        """(position, names, strength) of every mention in one text. Memoised: a conversation
        sends the same turns again with each new message."""
        with self._cache_lock:
            found = self._cache.get(text)
            if found is not None:
                self._cache.move_to_end(text)
                return found
        toks = normalise(text)
        found = []
        i = 0
        while i < len(toks):
            hit = None
            for n in range(min(self.max_len, len(toks) - i), 0, -1):  # longest match first
                entry = self._phrases.get(tuple(toks[i:i + n]))
                if entry is not None:
                    hit = (n, entry[0], entry[1])
                    break
            tok = toks[i]
            if hit is None and len(tok) >= 5 and tok not in GENERIC and tok not in self._known_words:
                for cand in self._typo_words.get(tok[:2], ()):
                    if _one_edit(tok, cand):
                        hit = (1, self._phrases[(cand,)][0], TYPO)
                        break
            if hit is None:
                i += 1
                continue
            n, owners, strength = hit
            found.append((i, tuple(sorted(owners)), strength))
            i += n
        with self._cache_lock:
            self._cache[text] = found
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return found

    def find(self, texts: Sequence[str]) -> list[Mention]:
        """Mentions in ``texts`` (oldest first; the last is the newest, e.g. the query), best
        first by ``strength * decay ** turns_back``, ties broken by recency. An ambiguous
        mention is narrowed to the names among its group mentioned elsewhere."""
        mentions = [
            Mention(names, back, pos, strength)
            for back, text in enumerate(reversed(texts))
            for pos, names, strength in self._scan(text)
        ]
        singles = [m.names[0] for m in sorted(mentions, key=lambda m: (m.turn, -m.position)) if len(m.names) == 1]
        for idx, m in enumerate(mentions):
            if len(m.names) > 1:
                named = [n for n in singles if n in m.names]
                if named:
                    mentions[idx] = Mention((named[0],), m.turn, m.position, m.strength)
        return sorted(mentions, key=lambda m: (-m.strength * self.decay**m.turn, m.turn, -m.position))

    def current(self, texts: Sequence[str]) -> tuple[str, ...]:
        """The entity (or ambiguous group) the conversation is about now; ``()`` when nothing
        matches (the caller then searches everything)."""
        mentions = self.find(texts)
        return mentions[0].names if mentions else ()


def entity_of(metadata: dict | None, title: str, max_title_words: int = 6) -> tuple[str, bool]:
    """The entity a chunk is about and whether it was named explicitly: ``(metadata["entity_name"],
    True)``, else ``(title, False)`` when the title is short and not a question (it may be a
    name), else ``("", False)``."""
    name = (metadata or {}).get("entity_name")
    if name:
        return str(name), True
    if title and "?" not in title and len(title.split()) <= max_title_words:
        return title, False
    return "", False
