"""Intent matching: the :class:`Matcher` protocol, the built-in n-gram matcher, the loader.

A matcher is built from the bot's intents (:class:`IntentSpec`: name, example
phrases, regex patterns) and answers :meth:`Matcher.match` with a
:class:`MatchResult`: the winning intent (``None`` below the confidence
threshold), its confidence in ``[0, 1]`` and the ranked candidates. Matchers
are plugins: the entry-point group ``talkwire.matchers`` maps a name to a
factory called as ``factory(intents, **options)``; :func:`load_matcher` resolves
it (``builtin`` is :class:`NGramMatcher`).

The built-in matcher is dependency-free: every example becomes a sparse TF-IDF
vector of word unigrams, word bigrams and character 3-grams (numbers are
normalised to one token, so "order 1001" matches "order 42"); a query is scored
with an inverted index (cosine against every example, the intent's score is its
best example). A matching regex pattern wins with confidence 1.0.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from talkwire.server.errors import ConfigError

__all__ = [
    "MATCHER_GROUP",
    "Candidate",
    "IntentSpec",
    "MatchResult",
    "Matcher",
    "MatcherFactory",
    "NGramMatcher",
    "load_matcher",
    "normalize",
]

MATCHER_GROUP = "talkwire.matchers"


@dataclass(frozen=True, slots=True)
class IntentSpec:
    """What a matcher learns from: an intent's name, example phrases and regex patterns."""

    name: str
    examples: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Candidate:
    intent: str
    score: float


@dataclass(frozen=True, slots=True)
class MatchResult:
    """``intent`` is ``None`` when nothing reached the threshold.

    ``alternatives`` are the ranked candidates (best first, the winner
    included), so a caller can ask a clarifying question when the first two
    are within a margin (:meth:`is_tie`).
    """

    intent: str | None
    confidence: float
    alternatives: tuple[Candidate, ...] = field(default_factory=tuple)

    def is_tie(self, margin: float) -> bool:
        if self.intent is None or len(self.alternatives) < 2:
            return False
        first, second = self.alternatives[0], self.alternatives[1]
        return first.score - second.score < margin and second.score > 0


@runtime_checkable
class Matcher(Protocol):
    """Maps free text to an intent."""

    def match(self, text: str) -> MatchResult: ...


class MatcherFactory(Protocol):
    def __call__(self, intents: Sequence[IntentSpec], **options: Any) -> Matcher: ...


_NUM_RE = re.compile(r"\d+(?:[.,]\d+)*")
_TOKEN_RE = re.compile(r"[^\W_]+|#", re.UNICODE)
_APOS_RE = re.compile("['\u2019]")


def normalize(text: str) -> list[str]:
    """Lowercase word tokens; every number becomes ``#``; apostrophes are dropped."""
    text = _APOS_RE.sub("", text.lower())
    text = _NUM_RE.sub(" # ", text)
    return _TOKEN_RE.findall(text)


_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "i",
        "me",
        "my",
        "mine",
        "we",
        "our",
        "you",
        "your",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "am",
        "do",
        "does",
        "did",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "with",
        "about",
        "from",
        "by",
        "and",
        "or",
        "but",
        "so",
        "if",
        "then",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "please",
        "pls",
        "just",
        "any",
        "some",
        "there",
        "here",
        "have",
        "has",
        "had",
        "get",
        "got",
        "want",
        "like",
        "need",
        "id",
        "im",
        "ive",
        "ill",
        "dont",
        "let",
        "us",
        "tell",
        "show",
        "give",
    ]
)
_SUFFIXES = ("ing", "ed", "es", "s")


def _stem(tok: str) -> str:
    for suf in _SUFFIXES:
        if len(tok) > len(suf) + 2 and tok.endswith(suf) and not tok.endswith("ss"):
            return tok[: -len(suf)]
    return tok


def _features(tokens: list[str]) -> dict[str, float]:
    """Word unigrams (stemmed, no stop words), word bigrams, char 3-grams of content words."""
    feats: dict[str, float] = defaultdict(float)
    content = [_stem(t) for t in tokens if t not in _STOP]
    if not content:  # "hi", "thanks", "help me": keep what there is
        content = [_stem(t) for t in tokens]
    for tok in content:
        feats["w:" + tok] += 1.0
    for a, b in itertools.pairwise(tokens):
        if a not in _STOP or b not in _STOP:
            feats["b:" + a + " " + b] += 0.5
    for tok in content:
        padded = f" {tok} "
        for i in range(len(padded) - 2):
            feats["c:" + padded[i : i + 3]] += 0.3
    return feats


class NGramMatcher:
    """The built-in matcher: TF-IDF over word and character n-grams, plus regex patterns.

    ``threshold``: the minimum confidence for a match (below it the result has
    ``intent=None`` and the candidates for suggestions). ``top_k``: how many
    candidates to return.
    """

    def __init__(
        self,
        intents: Sequence[IntentSpec],
        *,
        threshold: float = 0.3,
        top_k: int = 3,
        blend: float = 0.5,
        rescore: int = 6,
        **_: Any,
    ) -> None:
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        self.blend = float(blend)
        self.rescore = max(1, int(rescore))
        self._names: list[str] = []
        self._patterns: list[tuple[re.Pattern[str], str]] = []
        example_feats: list[dict[str, float]] = []
        example_intent: list[int] = []
        for idx, spec in enumerate(intents):
            self._names.append(spec.name)
            for pat in spec.patterns:
                self._patterns.append((re.compile(pat, re.IGNORECASE), spec.name))
            for ex in spec.examples:
                feats = _features(normalize(ex))
                if feats:
                    example_feats.append(feats)
                    example_intent.append(idx)
        n_docs = max(len(example_feats), 1)
        df: dict[str, int] = defaultdict(int)
        for feats in example_feats:
            for f in feats:
                df[f] += 1
        self._idf = {f: math.log(1.0 + n_docs / d) for f, d in df.items()}
        self._max_idf = math.log(1.0 + n_docs)
        self._example_intent = example_intent
        centroids: list[dict[str, float]] = [defaultdict(float) for _ in self._names]
        examples_by_intent: list[list[dict[str, float]]] = [[] for _ in self._names]
        for ex_idx, feats in enumerate(example_feats):
            weighted = {f: v * self._idf[f] for f, v in feats.items()}
            norm = math.sqrt(sum(w * w for w in weighted.values())) or 1.0
            unit = {f: w / norm for f, w in weighted.items()}
            examples_by_intent[example_intent[ex_idx]].append(unit)
            centroid = centroids[example_intent[ex_idx]]
            for f, w in unit.items():
                centroid[f] += w
        # per intent: feature -> [(example index within the intent, weight)]
        self._ex_postings: list[dict[str, list[tuple[int, float]]]] = []
        self._ex_count = [len(exs) for exs in examples_by_intent]
        for exs in examples_by_intent:
            ipost: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for local_idx, unit in enumerate(exs):
                for f, w in unit.items():
                    ipost[f].append((local_idx, w))
            self._ex_postings.append(dict(ipost))
        cpostings: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for intent_idx, centroid in enumerate(centroids):
            norm = math.sqrt(sum(w * w for w in centroid.values())) or 1.0
            for f, w in centroid.items():
                cpostings[f].append((intent_idx, w / norm))
        self._cpostings = dict(cpostings)

    @property
    def intents(self) -> tuple[str, ...]:
        return tuple(self._names)

    def scores(self, text: str) -> dict[str, float]:
        """Similarity of ``text`` to each intent.

        The centroid of every intent's examples is scored through an inverted
        index; the best few intents are then rescored with their closest single
        example: ``(1 - blend) * best_example + blend * centroid``.
        """
        feats = _features(normalize(text))
        idf = self._idf
        query: dict[str, float] = {}
        sq = 0.0
        for f, v in feats.items():
            w = idf.get(f)
            if w is not None:
                wv = v * w
                query[f] = wv
            else:  # unseen features still count towards the query norm
                wv = v * self._max_idf
            sq += wv * wv
        if not query:
            return {}
        qnorm = math.sqrt(sq) or 1.0
        cacc = [0.0] * len(self._names)
        cpostings = self._cpostings
        for f, wv in query.items():
            for intent_idx, w in cpostings[f]:
                cacc[intent_idx] += wv * w
        ranked = sorted(range(len(cacc)), key=cacc.__getitem__, reverse=True)[: self.rescore]
        mix = self.blend
        names = self._names
        out: dict[str, float] = {}
        for intent_idx in ranked:
            centroid_score = cacc[intent_idx] / qnorm
            if centroid_score <= 0.0:
                continue
            dots = [0.0] * self._ex_count[intent_idx]
            ipost = self._ex_postings[intent_idx]
            for f, wv in query.items():
                hits = ipost.get(f)
                if hits is not None:
                    for local_idx, w in hits:
                        dots[local_idx] += wv * w
            best = max(dots, default=0.0)
            out[names[intent_idx]] = (1.0 - mix) * best / qnorm + mix * centroid_score
        return out

    def match(self, text: str) -> MatchResult:
        for pattern, name in self._patterns:
            if pattern.search(text):
                scores = self.scores(text)
                scores[name] = 1.0
                return self._result(scores, forced=name)
        return self._result(self.scores(text))

    def _result(self, scores: Mapping[str, float], forced: str | None = None) -> MatchResult:
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_k]
        cands = tuple(Candidate(n, round(min(s, 1.0), 4)) for n, s in ranked)
        if forced is not None:
            return MatchResult(forced, 1.0, cands)
        if not cands or cands[0].score < self.threshold:
            return MatchResult(None, cands[0].score if cands else 0.0, cands)
        return MatchResult(cands[0].intent, cands[0].score, cands)


def _entry_point_factory(name: str) -> Callable[..., Any] | None:
    for ep in entry_points(group=MATCHER_GROUP):
        if ep.name == name:
            loaded: Callable[..., Any] = ep.load()
            return loaded
    return None


def load_matcher(
    name: str, intents: Iterable[IntentSpec], options: Mapping[str, Any] | None = None
) -> Matcher:
    """Build the matcher registered as ``name`` in ``talkwire.matchers``.

    ``builtin`` always resolves (even when the distribution's entry points are
    not installed). Raises :class:`ConfigError` for an unknown name.
    """
    factory = _entry_point_factory(name)
    if factory is None:
        if name != "builtin":
            raise ConfigError(f"bot.matcher.name: no matcher {name!r} in group {MATCHER_GROUP}")
        factory = NGramMatcher
    matcher = factory(list(intents), **dict(options or {}))
    if not isinstance(matcher, Matcher):
        raise ConfigError(f"bot.matcher.name: {name!r} did not build a Matcher")
    return matcher
