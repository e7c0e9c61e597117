"""Heuristic quality filters: Gopher quality and repetition, C4 line and page rules, FineWeb rules.

Every threshold is a setting whose default is the published one, and every setting's docstring
names where that default comes from:

- Gopher: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
  Gopher", Appendix A.1.1 (quality) and Table A1 (repetition), as implemented in datatrove's
  `GopherQualityFilter` and `GopherRepetitionFilter`.
- C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
  Transformer", Section 2.2, and its reference code (TFDS `c4_utils.clean_page`, datatrove's
  `C4QualityFilter`).
- FineWeb: Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data
  at Scale", Section 3.6 "custom filters" (datatrove's `FineWebQualityFilter`).

All filters see text the same way, through two helpers:

- `split_words`: whitespace-separated tokens with leading and trailing punctuation stripped
  (`PUNCTUATION`: ASCII punctuation plus typographic quotes, dashes, ellipsis and bullets);
  tokens that are all punctuation are not words. "don't" stays one word, "(1999)," becomes
  "1999", "#news" becomes "news" and a lone "—" is dropped.
- `split_lines`: the lines of the text with surrounding whitespace stripped; blank lines are
  not lines (so paragraph breaks never count as short, duplicate or unpunctuated lines).

The keep-or-remove filters also expose `measure(text)`, every statistic they test, and
`failed_rules(text)`, every rule the text breaks in order; `reason` is the first of those (found
without measuring what the rules before it do not need: see `RuleFilter.measure_stages`).
"""

from __future__ import annotations

import dataclasses
import operator
import re
import string
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import count, filterfalse, repeat
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from scratchlm.data.documents import Document
from scratchlm.data.pipeline import Filter, Step, StepStats
from scratchlm.errors import UserError

PUNCTUATION = string.punctuation + "“”„‟‘’‚‛«»‹›—–―‐…•·‧¡¿"
"""What `split_words` strips from both ends of a whitespace-separated token."""

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_HAS_LETTER = re.compile(r"[^\W\d_]")  # a Unicode letter: a word character that is no digit or underscore


# These run on every document (and C4 splits every line into words), so they chain C-level
# iterators (map, filter) rather than loop in Python.


def split_words(text: str) -> list[str]:
    """The words of a text: whitespace split, punctuation stripped from both ends, empty tokens dropped."""
    return list(filter(None, map(str.strip, text.split(), repeat(PUNCTUATION))))


def split_lines(text: str) -> list[str]:
    """The non-blank lines of a text, each stripped of surrounding whitespace."""
    return list(filter(None, map(str.strip, text.splitlines())))


def split_paragraphs(text: str) -> list[str]:
    """The non-blank paragraphs of a text (separated by blank lines), each stripped."""
    return list(filter(None, map(str.strip, _PARAGRAPH_BREAK.split(text))))


def duplicates(items: Sequence[str]) -> tuple[int, int]:
    """How many items repeat an earlier item, and their characters (first occurrences not counted)."""
    distinct = set(items)  # one copy of each item: the first occurrences
    return len(items) - len(distinct), sum(map(len, items)) - sum(map(len, distinct))


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


class Rule(NamedTuple):
    """One keep condition: the document is kept when `keep(measure[metric], threshold)` holds."""

    reason: str
    metric: str
    keep: Callable[[float, float], bool]
    threshold: float


class RuleFilter(Filter):
    """A filter made of rules over measured statistics; the first broken rule is the reason."""

    def measure(self, text: str) -> dict[str, float]:
        """Every statistic the rules test."""
        raise NotImplementedError

    def measure_stages(self, text: str) -> Iterator[dict[str, float]]:
        """`measure` in parts, in the order the rules need them, so that `reason` can stop measuring
        at the first broken rule; one part unless a filter splits its measuring up."""
        yield self.measure(text)

    def rules(self) -> list[Rule]:
        """The rules in the order they are checked."""
        raise NotImplementedError

    def failed_rules(self, text: str) -> list[str]:
        """The reasons of every rule the text breaks, in order (empty if it passes)."""
        stats = self.measure(text)
        return [rule.reason for rule in self.checks if not rule.keep(stats[rule.metric], rule.threshold)]

    def reason(self, document: Document) -> str | None:
        """The first rule of `failed_rules`, measuring only as many stages as the rules up to it need."""
        stats: dict[str, float] = {}
        stages = self.measure_stages(document.text)
        for rule in self.checks:
            while rule.metric not in stats:
                stats.update(next(stages))
            if not rule.keep(stats[rule.metric], rule.threshold):
                return rule.reason
        return None

    @cached_property
    def checks(self) -> list[Rule]:
        """`rules()`, built once."""
        return self.rules()


def _check_ratio(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0 <= value <= 1:
            raise UserError(f"{type(config).__name__}.{name} is {value}; set it within [0, 1].")


# ---- Gopher quality -------------------------------------------------------------------------

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


@dataclass
class GopherQualityConfig:
    """Gopher's quality rules (Rae et al. 2021, Appendix A.1.1; datatrove's GopherQualityFilter)."""

    min_words: int = 50
    """Fewest words a document may have; fewer is "gopher_short_doc". Gopher A.1.1: 50 to 100,000 words."""
    max_words: int = 100_000
    """Most words a document may have; more is "gopher_long_doc". Gopher A.1.1: 50 to 100,000 words."""
    min_mean_word_length: float = 3.0
    """Shortest mean word length in characters ("gopher_below_avg_threshold"). Gopher A.1.1: 3 to 10."""
    max_mean_word_length: float = 10.0
    """Longest mean word length in characters ("gopher_above_avg_threshold"). Gopher A.1.1: 3 to 10."""
    max_symbol_word_ratio: float = 0.1
    """Most "#" per word ("gopher_too_many_hashes") and most "..."/"…" per word ("gopher_too_many_ellipsis"), each on its own. Gopher A.1.1: 0.1."""
    max_bullet_lines_ratio: float = 0.9
    """Largest fraction of lines that start with a bullet ("gopher_too_many_bullets"). Gopher A.1.1: 90%."""
    max_ellipsis_lines_ratio: float = 0.3
    """Largest fraction of lines that end with "..." or "…" ("gopher_too_many_end_ellipsis"). Gopher A.1.1: 30%."""
    min_alpha_words_ratio: float = 0.8
    """Smallest fraction of words with at least one alphabetic character ("gopher_below_alpha_threshold"). Gopher A.1.1: 80%."""
    min_stop_words: int = 2
    """Fewest occurrences of stop words (case-insensitive; "gopher_too_few_stop_words"). Gopher A.1.1: at least two; counted as occurrences, as datatrove does."""
    stop_words: list[str] = field(default_factory=lambda: list(GOPHER_STOP_WORDS))
    """The stop words. Gopher A.1.1: the, be, to, of, and, that, have, with."""
    bullets: list[str] = field(default_factory=lambda: ["•", "‣", "◦", "▪", "●", "○", "■", "□", "-", "*"])
    """What a bullet line starts with. Gopher names no characters; datatrove checks only "•"; these add the common list markers."""

    def __post_init__(self) -> None:
        _check_ratio(self, "max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "min_alpha_words_ratio")
        if not 0 <= self.min_words <= self.max_words:
            raise UserError(f"min_words ({self.min_words}) must be at least 0 and at most max_words ({self.max_words}).")
        if not 0 <= self.min_mean_word_length <= self.max_mean_word_length:
            raise UserError("min_mean_word_length must be at least 0 and at most max_mean_word_length.")
        if self.max_symbol_word_ratio < 0 or self.min_stop_words < 0:
            raise UserError("max_symbol_word_ratio and min_stop_words must be at least 0.")
        if any(not bullet for bullet in self.bullets):
            raise UserError("A bullet cannot be the empty string; remove it from bullets.")


class GopherQualityFilter(RuleFilter):
    """Removes documents that break Gopher's quality rules (Rae et al. 2021, Appendix A.1.1).

    Defaults are Gopher's published values. Words are `split_words` (punctuation stripped);
    the "#" and ellipsis counts are over the raw text, as in datatrove; bullet and ellipsis
    line ratios are over non-blank lines (datatrove counts blank lines too, diluting them).
    """

    name: ClassVar[str] = "gopher_quality"

    def __init__(self, config: GopherQualityConfig | None = None) -> None:
        super().__init__()
        self.config = config or GopherQualityConfig()
        self._stop_words = frozenset(word.lower() for word in self.config.stop_words)
        self._bullets = tuple(self.config.bullets)

    def rules(self) -> list[Rule]:
        c = self.config
        ge, le = operator.ge, operator.le
        return [
            Rule("gopher_short_doc", "words", ge, c.min_words),
            Rule("gopher_long_doc", "words", le, c.max_words),
            Rule("gopher_below_avg_threshold", "mean_word_length", ge, c.min_mean_word_length),
            Rule("gopher_above_avg_threshold", "mean_word_length", le, c.max_mean_word_length),
            Rule("gopher_too_many_hashes", "hash_word_ratio", le, c.max_symbol_word_ratio),
            Rule("gopher_too_many_ellipsis", "ellipsis_word_ratio", le, c.max_symbol_word_ratio),
            Rule("gopher_too_many_bullets", "bullet_lines_ratio", le, c.max_bullet_lines_ratio),
            Rule("gopher_too_many_end_ellipsis", "ellipsis_lines_ratio", le, c.max_ellipsis_lines_ratio),
            Rule("gopher_below_alpha_threshold", "alpha_words_ratio", ge, c.min_alpha_words_ratio),
            Rule("gopher_too_few_stop_words", "stop_words", ge, c.min_stop_words),
        ]

    def measure(self, text: str) -> dict[str, float]:
        words = split_words(text)
        lines = split_lines(text)
        n_words, n_lines = len(words), len(lines)
        # An all-letter word has a letter; only the few others (digits, apostrophes, ...) need the regex.
        others = list(filterfalse(str.isalpha, words))
        alpha_words = n_words - len(others) + sum(1 for word in others if _HAS_LETTER.search(word))
        return {
            "words": n_words,
            "mean_word_length": _ratio(sum(map(len, words)), n_words),
            "hash_word_ratio": _ratio(text.count("#"), n_words),
            "ellipsis_word_ratio": _ratio(text.count("...") + text.count("…"), n_words),
            "bullet_lines_ratio": _ratio(sum(map(str.startswith, lines, repeat(self._bullets))), n_lines),
            "ellipsis_lines_ratio": _ratio(sum(map(str.endswith, lines, repeat(("...", "…")))), n_lines),
            "alpha_words_ratio": _ratio(alpha_words, n_words),
            "stop_words": sum(map(self._stop_words.__contains__, map(str.lower, words))),
        }


# ---- Gopher repetition ----------------------------------------------------------------------


@dataclass
class GopherRepetitionConfig:
    """Gopher's repetition rules (Rae et al. 2021, Table A1; datatrove's GopherRepetitionFilter)."""

    max_dup_para_frac: float = 0.30
    """Largest fraction of paragraphs that repeat an earlier paragraph ("dup_para_frac"). Gopher Table A1: 0.30."""
    max_dup_para_char_frac: float = 0.20
    """Largest fraction of characters in repeated paragraphs ("dup_para_char_frac"). Gopher Table A1: 0.20."""
    max_dup_line_frac: float = 0.30
    """Largest fraction of lines that repeat an earlier line ("dup_line_frac"). Gopher Table A1: 0.30."""
    max_dup_line_char_frac: float = 0.20
    """Largest fraction of characters in repeated lines ("dup_line_char_frac"). Gopher Table A1: 0.20."""
    max_top_ngram_char_fracs: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    """Largest fraction of word characters covered by the most frequent n-gram, for n = 2, 3, 4, ... in order ("top_{n}_gram"); [] turns it off. Gopher Table A1: 0.20, 0.18, 0.16."""
    max_dup_ngram_char_fracs: list[float] = field(default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])
    """Largest fraction of word characters covered by n-grams that occur more than once, for n = 5, 6, 7, ... in order ("duplicated_{n}_n_grams"); [] turns it off. Gopher Table A1: 0.15, 0.14, 0.13, 0.12, 0.11, 0.10 for n = 5 to 10."""

    def __post_init__(self) -> None:
        _check_ratio(self, "max_dup_para_frac", "max_dup_para_char_frac", "max_dup_line_frac", "max_dup_line_char_frac")
        for value in [*self.max_top_ngram_char_fracs, *self.max_dup_ngram_char_fracs]:
            if not 0 <= value <= 1:
                raise UserError(f"An n-gram character fraction is {value}; set each within [0, 1].")


TOP_NGRAM_FIRST_N = 2
"""`max_top_ngram_char_fracs[i]` is for n-grams of TOP_NGRAM_FIRST_N + i words."""
DUP_NGRAM_FIRST_N = 5
"""`max_dup_ngram_char_fracs[i]` is for n-grams of DUP_NGRAM_FIRST_N + i words."""


NUMPY_MIN_REPEATED = 256
"""`ngram_char_fraction_levels` hands over to numpy at the first n with more starts of repeated
n-grams than this and a quarter of the words."""


def ngram_char_fractions(words: Sequence[str], top_ns: Iterable[int], dup_ns: Iterable[int]) -> dict[str, float]:
    """Gopher's n-gram repetition statistics over word n-grams, as fractions of all word characters.

    "top_{n}": characters covered by the most frequent n-gram, counted once where its
    occurrences overlap (of n-grams tied on count, the one covering most); 0 when no n-gram
    occurs twice.
    "dup_{n}": characters covered by every n-gram that occurs more than once, each character
    counted once however many such n-grams cover it.
    """
    top_ns, dup_ns = list(top_ns), list(dup_ns)
    out = {f"top_{n}": 0.0 for n in top_ns} | {f"dup_{n}": 0.0 for n in dup_ns}
    for level in ngram_char_fraction_levels(words, top_ns, dup_ns):
        out.update(level)
    return out


def ngram_char_fraction_levels(words: Sequence[str], top_ns: Iterable[int], dup_ns: Iterable[int]) -> Iterator[dict[str, float]]:
    """`ngram_char_fractions` one n at a time, by increasing n, so that a caller can stop early.

    Each dict holds the fractions asked for at one n; once no n-gram repeats, the last one holds
    all the remaining ones (0).

    Exact (n-grams are tuples of their words, so only equal word sequences count together) and
    cheap on real text: an n-gram can occur twice only where the (n-1)-grams at its start and one
    word later both do, so each n looks only at those starts. In prose most bigrams occur once and
    a few percent of the words start a repeated 3-gram, so nearly all the work is counting the
    bigrams, a few passes over the words. Where most starts stay in play (a passage repeated over
    and over), Python would pay for each of them at every n, so past `NUMPY_MIN_REPEATED` such
    starts and a quarter of the words `_ngram_levels_numpy` takes over, whose cost does not depend
    on how much repeats.
    """
    top_set, dup_set = {n for n in top_ns if n >= 1}, {n for n in dup_ns if n >= 1}
    if not top_set | dup_set:
        return
    first, last = min(top_set | dup_set), max(top_set | dup_set)
    total = sum(map(len, words))
    grams = list(zip(*(words[i:] for i in range(first))))  # the n-gram at every start, for n = first
    counts = Counter(grams)
    # start -> n-gram (a nested tuple of its words), for the n-grams that occur more than once
    repeated = {start: gram for start, gram in enumerate(grams) if counts[gram] > 1}
    for n in range(first, last + 1):
        if n > first:
            candidates = {start: (gram, words[start + n - 1]) for start, gram in repeated.items() if start + 1 in repeated}
            counts = Counter(candidates.values())
            repeated = {start: gram for start, gram in candidates.items() if counts[gram] > 1}
        if not repeated:  # then no longer n-gram repeats either
            yield _zero_levels(n, last, top_set, dup_set)
            return
        if len(repeated) > max(NUMPY_MIN_REPEATED, len(words) // 4):
            yield from _ngram_levels_numpy(words, n, last, top_set, dup_set)
            return
        level: dict[str, float] = {}
        if n in top_set:
            level[f"top_{n}"] = _top_coverage(words, repeated, counts, n) / total
        if n in dup_set:
            level[f"dup_{n}"] = _covered_chars(words, repeated, n) / total
        yield level


def _zero_levels(first: int, last: int, top_set: set[int], dup_set: set[int]) -> dict[str, float]:
    """The fractions asked for from n = first to last, all 0 (once nothing repeats)."""
    return {f"{kind}_{n}": 0.0 for n in range(first, last + 1) for kind, ns in (("top", top_set), ("dup", dup_set)) if n in ns}


def _ngram_levels_numpy(words: Sequence[str], from_n: int, last: int, top_set: set[int], dup_set: set[int]) -> Iterator[dict[str, float]]:
    """`ngram_char_fraction_levels` from n = from_n, over every start in numpy.

    O(words × log words) per n, however much repeats: each n-gram gets a dense id from the
    (n-1)-gram id at the same start and the word that extends it (one `np.unique` per n, exact,
    no hashing), and covered words are marked with a +1/-1 difference array and a cumulative sum.
    """
    n_words = len(words)
    index = dict(zip(dict.fromkeys(words), count()))
    word_ids = np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=n_words)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=n_words)
    total = float(lengths.sum())
    prefix = np.concatenate(([0], np.cumsum(lengths)))
    vocab = len(index)
    ids = word_ids  # dense ids of the n-grams for the current n, one per start position

    def covered_chars(starts: np.ndarray, n: int) -> float:
        delta = np.zeros(n_words + 1, dtype=np.int64)
        delta[starts] += 1  # starts are distinct, so fancy += adds exactly once each
        delta[starts + n] -= 1
        return float(lengths[np.cumsum(delta[:n_words]) > 0].sum())

    for n in range(1, last + 1):
        if n > n_words:
            yield _zero_levels(max(n, from_n), last, top_set, dup_set)
            return
        if n > 1:
            keys = ids[:-1] * vocab + word_ids[n - 1 :]  # < words², exact in int64
            _, ids, counts = np.unique(keys, return_inverse=True, return_counts=True)
        else:
            counts = np.bincount(word_ids, minlength=vocab)
        if counts.max() == 1:  # no n-gram repeats, so no longer one does
            yield _zero_levels(max(n, from_n), last, top_set, dup_set)
            return
        if n < from_n:
            continue
        level: dict[str, float] = {}
        if n in top_set:
            level[f"top_{n}"] = _top_coverage_numpy(ids, counts, prefix, n) / total
        if n in dup_set:
            level[f"dup_{n}"] = covered_chars(np.flatnonzero(counts[ids] > 1), n) / total
        yield level


def _top_coverage_numpy(ids: np.ndarray, counts: np.ndarray, prefix: np.ndarray, n: int) -> float:
    """`_top_coverage` over every start: `ids[start]` is the dense id of the n-gram there.

    Walking the occurrences of one n-gram in order of start, each adds its characters past the
    end of the previous one: coverage per id is one bincount.
    """
    starts = np.argsort(ids, kind="stable")  # start positions grouped by id, increasing within an id
    grouped = ids[starts]
    previous_end = np.full(len(starts), -1, dtype=np.int64)
    same = grouped[1:] == grouped[:-1]
    previous_end[1:][same] = starts[:-1][same] + n
    begin = np.maximum(starts, previous_end)  # first word this occurrence adds
    added = prefix[starts + n] - prefix[begin]
    coverage = np.bincount(grouped, weights=added, minlength=len(counts))
    return float(coverage[counts == counts.max()].max())


def _top_coverage(words: Sequence[str], repeated: dict[int, Hashable], counts: Counter[Hashable], n: int) -> int:
    """Characters covered by the most frequent n-gram (the most covering one among ties).

    `repeated` maps the starts of the repeated n-grams, in increasing order, to their n-gram: each
    occurrence adds its words past the end of the previous occurrence of the same n-gram.
    """
    most = max(map(counts.__getitem__, repeated.values()))
    covered: dict[Hashable, int] = {}
    reach: dict[Hashable, int] = {}  # end of the latest occurrence of each n-gram
    for start, gram in repeated.items():
        if counts[gram] == most:
            covered[gram] = covered.get(gram, 0) + sum(map(len, words[max(start, reach.get(gram, 0)) : start + n]))
            reach[gram] = start + n
    return max(covered.values())


def _covered_chars(words: Sequence[str], starts: Iterable[int], n: int) -> int:
    """Characters of the words covered by the n-grams at these increasing starts, each counted once."""
    covered = reach = 0
    for start in starts:
        covered += sum(map(len, words[max(start, reach) : start + n]))
        reach = start + n
    return covered


class GopherRepetitionFilter(RuleFilter):
    """Removes repetitive documents by Gopher's rules (Rae et al. 2021, Table A1).

    Checked in datatrove's order: paragraphs, lines, top n-grams, duplicated n-grams. Duplicate
    lines and paragraphs count the repeats of an earlier one (not the first occurrence), as
    datatrove does, over non-blank stripped lines and blank-line-separated paragraphs; their
    character fractions are over the characters of all lines (or paragraphs). n-grams are of
    `split_words` words (case kept) and their fractions are over all word characters, following
    the paper's definitions (see `ngram_char_fractions`).
    """

    name: ClassVar[str] = "gopher_repetition"

    def __init__(self, config: GopherRepetitionConfig | None = None) -> None:
        super().__init__()
        self.config = config or GopherRepetitionConfig()
        self.top_ns = [TOP_NGRAM_FIRST_N + i for i in range(len(self.config.max_top_ngram_char_fracs))]
        self.dup_ns = [DUP_NGRAM_FIRST_N + i for i in range(len(self.config.max_dup_ngram_char_fracs))]

    def rules(self) -> list[Rule]:
        c = self.config
        le = operator.le
        rules = [
            Rule("dup_para_frac", "dup_para_frac", le, c.max_dup_para_frac),
            Rule("dup_para_char_frac", "dup_para_char_frac", le, c.max_dup_para_char_frac),
            Rule("dup_line_frac", "dup_line_frac", le, c.max_dup_line_frac),
            Rule("dup_line_char_frac", "dup_line_char_frac", le, c.max_dup_line_char_frac),
        ]
        rules += [Rule(f"top_{n}_gram", f"top_{n}", le, t) for n, t in zip(self.top_ns, c.max_top_ngram_char_fracs)]
        rules += [Rule(f"duplicated_{n}_n_grams", f"dup_{n}", le, t) for n, t in zip(self.dup_ns, c.max_dup_ngram_char_fracs)]
        return rules

    def measure(self, text: str) -> dict[str, float]:
        stats: dict[str, float] = {}
        for stage in self.measure_stages(text):
            stats.update(stage)
        return stats

    def measure_stages(self, text: str) -> Iterator[dict[str, float]]:
        """Paragraph and line statistics, then the n-gram ones one n at a time: a document whose
        lines already repeat too much is never split into words."""
        paragraphs, lines = split_paragraphs(text), split_lines(text)
        dup_paras, dup_para_chars = duplicates(paragraphs)
        dup_lines, dup_line_chars = duplicates(lines)
        yield {
            "dup_para_frac": _ratio(dup_paras, len(paragraphs)),
            "dup_para_char_frac": _ratio(dup_para_chars, sum(map(len, paragraphs))),
            "dup_line_frac": _ratio(dup_lines, len(lines)),
            "dup_line_char_frac": _ratio(dup_line_chars, sum(map(len, lines))),
        }
        yield from ngram_char_fraction_levels(split_words(text), self.top_ns, self.dup_ns)


# ---- C4 -------------------------------------------------------------------------------------


@dataclass
class C4Config:
    """C4's line and page rules (Raffel et al. 2020, Section 2.2; TFDS c4_utils, datatrove's C4QualityFilter)."""

    terminal_punctuation: list[str] = field(default_factory=lambda: [".", "!", "?", '"', "”"])
    """A line is kept only if it ends with one of these (and not with "..."). C4 2.2: "a period, exclamation mark, question mark, or end quotation mark"; TFDS also drops lines ending in an ellipsis."""
    min_words_per_line: int = 5
    """Lines with fewer words are dropped. C4 2.2: "only retained lines that contained at least 5 words" (datatrove's default of 3 swaps this with the sentence count)."""
    min_sentences: int = 3
    """Pages with fewer sentences in their kept lines are removed ("c4_too_few_sentences"). C4 2.2: "discarded any page with fewer than 3 sentences"."""
    remove_javascript_lines: bool = True
    """Drop lines containing "javascript" (any case). C4 2.2: "we removed any line with the word Javascript"."""
    remove_lorem_ipsum: bool = True
    """Remove pages containing "lorem ipsum" (any case; "c4_lorem_ipsum"). C4 2.2."""
    remove_curly_brace: bool = True
    """Remove pages containing "{" ("c4_curly_brace"). C4 2.2: "we removed any pages that contained a curly bracket"."""
    bad_words_file: str = ""
    """A file of bad words or phrases, one per line; pages containing one as a whole word (any case) are removed ("c4_bad_words"). C4 2.2 uses the "List of Dirty, Naughty, Obscene or Otherwise Bad Words"; "" = off (no list ships with scratchlm)."""

    def __post_init__(self) -> None:
        if self.min_words_per_line < 0 or self.min_sentences < 0:
            raise UserError("min_words_per_line and min_sentences must be at least 0.")
        if any(not mark for mark in self.terminal_punctuation):
            raise UserError("A terminal punctuation mark cannot be the empty string; remove it.")


# A sentence ends at a run of . ! ? (with closing quotes or brackets after it) before a space or the end.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")


def count_sentences(line: str) -> int:
    """Sentences in a line: ends of . ! ? before whitespace (abbreviations such as "Mr." count too)."""
    return len(_SENTENCE_END.findall(line))


def load_bad_words(path: str | Path) -> re.Pattern[str]:
    """A regex matching any listed word or phrase as a whole word in lowercased text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Bad-words file {path} does not exist; fix bad_words_file or set it to \"\" to turn the rule off.")
    words = {line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines()}
    words.discard("")
    if not words:
        raise UserError(f"Bad-words file {path} lists no words; add one word or phrase per line, or set bad_words_file to \"\".")
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


class C4Filter(Step):
    """C4's rules (Raffel et al. 2020, Section 2.2): drops lines, then keeps or removes the page.

    Page rules come first, over the page as given (the paper words them "any page that
    contained"; TFDS checks only lines that survived the line rules): "lorem ipsum", "{" and bad
    words remove the page. Then each non-blank line (stripped) is dropped if it does not end in
    terminal punctuation or ends in "...", has fewer than `min_words_per_line` words, or
    mentions javascript, checked in that order. A page with no lines left is removed
    ("c4_no_lines_left"), one whose kept lines hold fewer than `min_sentences` sentences too
    ("c4_too_few_sentences", sentences counted by `count_sentences`, at least one per kept
    line). Kept pages hold their kept lines, with a blank line wherever a paragraph break
    separated them (TFDS joins all lines with single newlines; we keep paragraphs for the
    Gopher paragraph rules). `line_stats` counts lines read, kept and dropped per reason.
    """

    name: ClassVar[str] = "c4"

    def __init__(self, config: C4Config | None = None) -> None:
        super().__init__()
        self.config = config or C4Config()
        self.line_stats = StepStats()
        """Lines of the pages that reached the line rules: read = kept + removed, per reason."""
        self._endings = tuple(self.config.terminal_punctuation)
        self._bad_words = load_bad_words(self.config.bad_words_file) if self.config.bad_words_file else None

    def page_reason(self, text: str) -> str | None:
        """Why the page rules remove this text as a whole, or None."""
        c = self.config
        lower = text.lower()
        if c.remove_lorem_ipsum and "lorem ipsum" in lower:
            return "c4_lorem_ipsum"
        if c.remove_curly_brace and "{" in text:
            return "c4_curly_brace"
        if self._bad_words is not None and self._bad_words.search(lower):
            return "c4_bad_words"
        return None

    def line_reason(self, line: str) -> str | None:
        """Why a stripped, non-blank line is dropped, or None to keep it."""
        if not line.endswith(self._endings) or line.endswith("..."):
            return "no_terminal_punct"
        if len(split_words(line)) < self.config.min_words_per_line:
            return "too_few_words"
        if self.config.remove_javascript_lines and "javascript" in line.lower():
            return "javascript"
        return None

    def apply(self, text: str) -> tuple[str, str | None]:
        """(the text with dropped lines removed, None) or ("", the reason the page is removed)."""
        why = self.page_reason(text)
        if why is not None:
            return "", why
        kept: list[str] = []
        dropped: list[str] = []  # the reason for each dropped line
        sentences = 0
        paragraph_break = False
        for line in map(str.strip, text.splitlines()):
            if not line:
                paragraph_break = bool(kept)
                continue
            reason = self.line_reason(line)
            if reason is not None:
                dropped.append(reason)
                continue
            if paragraph_break:
                kept.append("")
                paragraph_break = False
            kept.append(line)
            sentences += max(1, count_sentences(line))
        kept_lines = len(kept) - kept.count("")  # the "" are paragraph breaks
        self.line_stats.read += kept_lines + len(dropped)
        self.line_stats.kept += kept_lines
        self.line_stats.removed.update(dropped)
        if not kept:
            return "", "c4_no_lines_left"
        if sentences < self.config.min_sentences:
            return "", "c4_too_few_sentences"
        return "\n".join(kept) + ("\n" if text.endswith("\n") else ""), None

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for document in documents:
            self.stats.read += 1
            text, why = self.apply(document.text)
            if why is not None:
                self.remove(document, why)
                continue
            self.stats.kept += 1
            yield document if text == document.text else dataclasses.replace(document, text=text)


# ---- FineWeb --------------------------------------------------------------------------------

    def details(self) -> dict[str, Any]:
        return {"lines": self.line_stats.as_dict()}


@dataclass
class FineWebQualityConfig:
    """FineWeb's custom filters (Penedo et al. 2024, Section 3.6; datatrove's FineWebQualityFilter)."""

    line_punct_threshold: float = 0.12
    """Documents whose fraction of lines ending in terminal punctuation is at most this are removed ("fineweb_line_punct_ratio"). FineWeb: ≤ 0.12."""
    terminal_punctuation: list[str] = field(default_factory=lambda: [".", "'", '"', "!", "?", "”", "’"])
    """What a punctuated line ends with. datatrove's FineWebQualityFilter: . ' " ! ?; the typographic closing quotes are added."""
    short_line_length: int = 30
    """A line of at most this many characters is short. FineWeb: 30 (datatrove: len(line) <= 30)."""
    short_line_threshold: float = 0.67
    """Documents whose fraction of short lines is at least this are removed ("fineweb_short_line_ratio"). FineWeb: ≥ 0.67."""
    dup_line_char_threshold: float = 0.1
    """Documents whose fraction of characters in repeated lines is at least this are removed ("fineweb_char_dup_ratio"). FineWeb paper: ≥ 0.1 (datatrove's code default is 0.01)."""

    def __post_init__(self) -> None:
        _check_ratio(self, "line_punct_threshold", "short_line_threshold", "dup_line_char_threshold")
        if self.short_line_length < 0:
            raise UserError("short_line_length must be at least 0.")
        if any(not mark for mark in self.terminal_punctuation):
            raise UserError("A terminal punctuation mark cannot be the empty string; remove it.")


class FineWebQualityFilter(RuleFilter):
    """Removes documents by FineWeb's three custom rules (Penedo et al. 2024, Section 3.6).

    Checked in datatrove's order: line punctuation, short lines, duplicated-line characters.
    The boundaries are the paper's (a ratio equal to a threshold is removed). Lines are
    `split_lines` (non-blank, stripped; datatrove counts blank lines as short, unpunctuated
    lines). Repeated lines count the repeats of an earlier line, over the characters of all lines.
    """

    name: ClassVar[str] = "fineweb_quality"

    def __init__(self, config: FineWebQualityConfig | None = None) -> None:
        super().__init__()
        self.config = config or FineWebQualityConfig()
        self._endings = tuple(self.config.terminal_punctuation)

    def rules(self) -> list[Rule]:
        c = self.config
        return [
            Rule("fineweb_line_punct_ratio", "line_punct_ratio", operator.gt, c.line_punct_threshold),
            Rule("fineweb_short_line_ratio", "short_line_ratio", operator.lt, c.short_line_threshold),
            Rule("fineweb_char_dup_ratio", "dup_line_char_ratio", operator.lt, c.dup_line_char_threshold),
        ]

    def measure(self, text: str) -> dict[str, float]:
        lines = split_lines(text)
        short = self.config.short_line_length
        return {
            "line_punct_ratio": _ratio(sum(map(str.endswith, lines, repeat(self._endings))), len(lines)),
            "short_line_ratio": _ratio(sum(1 for line in lines if len(line) <= short), len(lines)),
            "dup_line_char_ratio": _ratio(duplicates(lines)[1], sum(map(len, lines))),
        }


# ---- All of them ----------------------------------------------------------------------------

FILTER_NAMES = ("gopher_repetition", "gopher_quality", "c4", "fineweb")


@dataclass
class QualityFiltersConfig:
    """The heuristic quality filters to run, in order, and the settings of each."""

    steps: list[str] = field(default_factory=lambda: list(FILTER_NAMES))
    """Which filters run, in this order; FineWeb's order (Penedo et al. 2024) is the default: gopher_repetition, gopher_quality, c4, fineweb."""
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    """Gopher repetition rules."""
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    """Gopher quality rules."""
    c4: C4Config = field(default_factory=C4Config)
    """C4 line and page rules."""
    fineweb: FineWebQualityConfig = field(default_factory=FineWebQualityConfig)
    """FineWeb rules."""

    def __post_init__(self) -> None:
        for step in self.steps:
            if step not in FILTER_NAMES:
                raise UserError(f"Unknown quality filter {step!r} in steps; choose from {', '.join(FILTER_NAMES)}.")
        if len(set(self.steps)) != len(self.steps):
            raise UserError("A quality filter is listed twice in steps; list each once.")


def build_quality_filters(config: QualityFiltersConfig | None = None) -> list[Step]:
    """The configured filters as pipeline steps, in order."""
    config = config or QualityFiltersConfig()
    makers: dict[str, Callable[[], Step]] = {
        "gopher_repetition": lambda: GopherRepetitionFilter(config.gopher_repetition),
        "gopher_quality": lambda: GopherQualityFilter(config.gopher_quality),
        "c4": lambda: C4Filter(config.c4),
        "fineweb": lambda: FineWebQualityFilter(config.fineweb),
    }
    return [makers[step]() for step in config.steps]
