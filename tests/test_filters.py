"""Heuristic quality filters: hand-made documents pass, or fail for the published reason."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from conftest import synthetic_text

from scratchlm.config import field_docs, from_dict
from scratchlm.data import filters
from scratchlm.data.documents import Document
from scratchlm.data.filters import (
    C4Config,
    C4Filter,
    FineWebQualityConfig,
    FineWebQualityFilter,
    GopherQualityConfig,
    GopherQualityFilter,
    GopherRepetitionConfig,
    GopherRepetitionFilter,
    QualityFiltersConfig,
    build_quality_filters,
    ngram_char_fractions,
    split_lines,
    split_words,
)
from scratchlm.errors import UserError

PROSE = """The old lighthouse stood at the edge of the harbour for more than a century, and people in the town still argue about who should have kept it. Every evening the keeper climbed one hundred and twelve steps, trimmed the wick, and wound the clockwork that turned the great lens. Ships that had never seen this coast could find the narrow channel by its light, even during winter storms.

When the lamp was finally replaced by an automatic beacon, the last keeper moved into a small cottage near the church. She kept a diary of every vessel that passed, and her notes, which fill eleven volumes, are now held by the county archive. Historians use them to study how trade changed along this part of the coast during the years between the two wars.
"""
PROSE_WORDS = PROSE.split()
SENTENCES = [s.strip() + "." for s in PROSE.replace("\n", " ").split(".") if s.strip()]


def doc(text: str, doc_id: str = "d") -> Document:
    return Document(id=doc_id, text=text)


def pseudo_words(count: int, seed: int = 0) -> list[str]:
    """`count` distinct lowercase made-up words of 5 to 7 letters."""
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        word = "".join(rng.choice("abcdefghijklmnoprstuvw") for _ in range(rng.randint(5, 7)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def chunks(words: list[str], size: int) -> list[str]:
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


ALL_FILTERS = [GopherQualityFilter, GopherRepetitionFilter, FineWebQualityFilter]


# ---- helpers and the clean document -----------------------------------------------------


def test_words_and_lines() -> None:
    assert split_words('He said: "don\'t (1999), #news — ok…"') == ["He", "said", "don't", "1999", "news", "ok"]
    assert split_lines("  a \n\n\t\n b\n") == ["a", "b"]


@pytest.mark.parametrize("filter_class", ALL_FILTERS)
def test_prose_passes_every_filter(filter_class: type) -> None:
    assert len(split_words(PROSE)) > 80
    assert filter_class().failed_rules(PROSE) == []


def test_prose_passes_c4_unchanged() -> None:
    step = C4Filter()
    assert [d.text for d in step.run([doc(PROSE)])] == [PROSE]
    assert step.line_stats.as_dict()["removed"] == 0


def test_every_setting_is_documented_with_its_source() -> None:
    for config in (GopherQualityConfig, GopherRepetitionConfig, C4Config, FineWebQualityConfig, QualityFiltersConfig):
        docs = field_docs(config)
        for name in config.__dataclass_fields__:
            assert docs.get(name), f"{config.__name__}.{name} has no docstring"
    for config in (GopherQualityConfig, GopherRepetitionConfig):
        assert all("Gopher" in text for text in field_docs(config).values())
    assert all("C4" in text for text in field_docs(C4Config).values())
    assert all("FineWeb" in text or "datatrove" in text for text in field_docs(FineWebQualityConfig).values())


def test_configs_load_and_validate() -> None:
    config = from_dict(QualityFiltersConfig, {"steps": ["c4", "fineweb"], "gopher_quality": {"min_words": 10}})
    assert [step.name for step in build_quality_filters(config)] == ["c4", "fineweb_quality"]
    assert config.gopher_quality.min_words == 10
    assert [step.name for step in build_quality_filters()] == ["gopher_repetition", "gopher_quality", "c4", "fineweb_quality"]
    with pytest.raises(UserError, match="Unknown quality filter"):
        QualityFiltersConfig(steps=["gopher"])
    with pytest.raises(UserError, match="within"):
        FineWebQualityConfig(short_line_threshold=1.5)
    with pytest.raises(UserError):
        GopherQualityConfig(min_words=200, max_words=100)


# ---- Gopher quality ---------------------------------------------------------------------

STOP = {"the", "be", "to", "of", "and", "that", "have", "with"}


def _bullet_lines(marker: str, every: int) -> str:
    """PROSE in lines of 7 words; all but every `every`-th line start with `marker`."""
    lines = chunks(PROSE_WORDS, 7)
    return "\n".join(f"{marker} {line}" if i % every else line for i, line in enumerate(lines, start=1)) + "\n"


def _long_words_text() -> str:
    long_words = ["internationalisation", "characteristically", "incomprehensibility", "telecommunications"]
    return " ".join(long_words[i % 4] for i in range(60)) + " the of and to.\n"


def _ellipsis_line_text() -> str:
    lines = chunks(PROSE_WORDS, 10)
    return "\n".join(line + ("..." if i % 2 else ".") for i, line in enumerate(lines)) + "\n"


GOPHER_QUALITY_CASES = {
    "gopher_short_doc": " ".join(PROSE_WORDS[:30]),
    "gopher_below_avg_threshold": "it is as he or I am to be at it so we go. " * 10,
    "gopher_above_avg_threshold": _long_words_text(),
    "gopher_too_many_hashes": PROSE + " ".join(f"#tag{i}" for i in range(20)) + "\n",
    "gopher_too_many_ellipsis": " ... ".join(chunks(PROSE_WORDS, 6)) + ".\n",
    "gopher_too_many_bullets": _bullet_lines("•", 20),
    "gopher_too_many_end_ellipsis": _ellipsis_line_text(),
    "gopher_below_alpha_threshold": PROSE + " ".join(str(1900 + i) for i in range(45)) + ".\n",
    "gopher_too_few_stop_words": " ".join(w for w in PROSE_WORDS if w.lower().strip(",.") not in STOP) + "\n",
}


@pytest.mark.parametrize("reason", sorted(GOPHER_QUALITY_CASES))
def test_gopher_quality_rule(reason: str) -> None:
    text = GOPHER_QUALITY_CASES[reason]
    gopher = GopherQualityFilter()
    assert gopher.failed_rules(text) == [reason], gopher.measure(text)
    assert gopher.reason(doc(text)) == reason


def test_gopher_quality_thresholds_and_bullets() -> None:
    assert GopherQualityFilter(GopherQualityConfig(max_words=100)).failed_rules(PROSE) == ["gopher_long_doc"]
    # 90% bullets is allowed, more is not; "-" and "*" lists count too.
    assert GopherQualityFilter().measure(_bullet_lines("-", 10))["bullet_lines_ratio"] == pytest.approx(0.9, abs=0.01)
    assert GopherQualityFilter().failed_rules(_bullet_lines("*", 20)) == ["gopher_too_many_bullets"]
    # Stop words count in any case.
    assert GopherQualityFilter().measure("The THE the")["stop_words"] == 3


# ---- Gopher repetition ------------------------------------------------------------------


def _lines_with_repeated_short_line() -> str:
    lines = chunks(pseudo_words(160, seed=1), 16)  # 10 long distinct lines
    out = []
    for i, line in enumerate(lines):
        out.append(line + ".")
        if i < 6:
            out.append("Read more.")
    return "\n".join(out) + "\n"


def _lines_with_repeated_long_line() -> str:
    lines = [line + "." for line in chunks(pseudo_words(160, seed=2), 16)]
    long_line = " ".join(pseudo_words(40, seed=3)) + "."
    return "\n".join(lines[:4] + [long_line] + lines[4:7] + [long_line] + lines[7:] + [long_line]) + "\n"


def _with_inserted(phrase: str, every: int, n_words: int, seed: int) -> str:
    """`n_words` distinct words with `phrase` inserted after every `every`-th."""
    out = []
    for i, word in enumerate(pseudo_words(n_words, seed), start=1):
        out.append(word)
        if i % every == 0:
            out.append(phrase)
    return " ".join(out) + ".\n"


REPETITION_CASES = {
    # (text, the reason, whether no other rule fails)
    "dup_para_frac": ("\n\n".join([PROSE.split("\n\n")[0]] * 5) + "\n", False),
    "dup_line_frac": (_lines_with_repeated_short_line(), True),
    "dup_line_char_frac": (_lines_with_repeated_long_line(), False),
    "top_2_gram": (_with_inserted("big cat", 3, 100, seed=4), True),
    "top_3_gram": (_with_inserted("big red cat", 6, 60, seed=5), True),
    "top_4_gram": (_with_inserted("big red cat sat", 9, 90, seed=6), True),
    "duplicated_5_n_grams": (_with_inserted("big red cat sat down", 12, 72, seed=7), True),
}


@pytest.mark.parametrize("reason", sorted(REPETITION_CASES))
def test_gopher_repetition_rule(reason: str) -> None:
    text, alone = REPETITION_CASES[reason]
    repetition = GopherRepetitionFilter()
    failed = repetition.failed_rules(text)
    assert failed[0] == reason, repetition.measure(text)
    if alone:
        assert failed == [reason], repetition.measure(text)
    assert repetition.reason(doc(text)) == reason


def test_repeated_paragraph_breaks_paragraph_and_line_rules() -> None:
    text = REPETITION_CASES["dup_para_frac"][0]
    failed = GopherRepetitionFilter().failed_rules(text)
    assert {"dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac", "duplicated_10_n_grams"} <= set(failed)
    assert GopherRepetitionFilter().measure(text)["dup_para_frac"] == pytest.approx(4 / 5)


def _naive_fractions(words: list[str], n: int) -> tuple[float, float]:
    """(top n-gram, duplicated n-gram) character fractions, straight from the definitions."""
    total = sum(len(w) for w in words)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)

    def coverage(keep) -> int:
        covered = set()
        for i, gram in enumerate(grams):
            if keep(gram):
                covered.update(range(i, i + n))
        return sum(len(words[i]) for i in covered)

    dup = coverage(lambda g: counts[g] > 1) / total if grams else 0.0
    top_count = max(counts.values(), default=0)
    if top_count < 2:
        return 0.0, dup
    top = max(coverage(lambda g, best=best: g == best) for best, c in counts.items() if c == top_count)
    return top / total, dup


@pytest.fixture(params=["default", "numpy_early"])
def numpy_switch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test as is, and again with numpy taking over as soon as a quarter of the starts repeat."""
    if request.param == "numpy_early":
        monkeypatch.setattr(filters, "NUMPY_MIN_REPEATED", 0)


@pytest.mark.usefixtures("numpy_switch")
@pytest.mark.parametrize("seed", range(40))
def test_ngram_fractions_match_a_naive_computation(seed: int) -> None:
    rng = random.Random(seed)
    vocabulary = ["a", "bb", "ccc", "dddd", "ee", "f"][: rng.randint(1, 6)]
    words = [rng.choice(vocabulary) for _ in range(rng.randint(2, 40))]
    fast = ngram_char_fractions(words, range(1, 11), range(1, 11))
    for n in range(1, 11):
        top, dup = _naive_fractions(words, n)
        assert fast[f"top_{n}"] == pytest.approx(top), (n, words)
        assert fast[f"dup_{n}"] == pytest.approx(dup), (n, words)


@pytest.mark.usefixtures("numpy_switch")
@pytest.mark.parametrize("seed", range(40))
def test_ngram_fractions_for_some_n_match_a_naive_computation(seed: int) -> None:
    # Larger vocabularies than above, so that most n-grams occur once and only some starts are
    # looked at for longer n; the first n asked for need not be 1, and may exceed the word count.
    rng = random.Random(seed)
    vocabulary = pseudo_words(rng.randint(1, 40), seed=seed)
    words = [rng.choice(vocabulary) for _ in range(rng.randint(1, 200))]
    top_ns, dup_ns = rng.sample(range(1, 12), rng.randint(0, 3)), rng.sample(range(1, 12), rng.randint(0, 3))
    fast = ngram_char_fractions(words, top_ns, dup_ns)
    assert set(fast) == {f"top_{n}" for n in top_ns} | {f"dup_{n}" for n in dup_ns}
    for n in top_ns:
        assert fast[f"top_{n}"] == pytest.approx(_naive_fractions(words, n)[0]), (n, words)
    for n in dup_ns:
        assert fast[f"dup_{n}"] == pytest.approx(_naive_fractions(words, n)[1]), (n, words)


@pytest.mark.parametrize("repeats", [1, 3, 12])
def test_ngram_fractions_of_a_repeated_passage_match_a_naive_computation(repeats: int) -> None:
    # A passage of 100 words repeated, among other words: at 3 and 12 copies, enough starts of
    # repeated n-grams for numpy to do the counting.
    rng = random.Random(repeats)
    passage = [rng.choice(PROSE_WORDS) for _ in range(100)]
    words = pseudo_words(50, seed=repeats) + passage * repeats + pseudo_words(30, seed=repeats + 1)
    fast = ngram_char_fractions(words, range(2, 11), range(2, 11))
    for n in range(2, 11):
        top, dup = _naive_fractions(words, n)
        assert fast[f"top_{n}"] == pytest.approx(top), n
        assert fast[f"dup_{n}"] == pytest.approx(dup), n


def test_ngram_fractions_on_known_texts() -> None:
    # "a b" occurs at 0, 2 and 4: count 3, covering all six 1-character words.
    assert ngram_char_fractions(["a", "b", "a", "b", "a", "b"], [2], [5])["top_2"] == pytest.approx(1.0)
    # Overlapping occurrences count once: "x x" occurs 3 times in "x x x x" but covers 4 words.
    assert ngram_char_fractions(["x", "x", "x", "x", "yy"], [2], [])["top_2"] == pytest.approx(4 / 6)
    # A 5-gram seen twice, each word counted once: 10 of 15 characters.
    words = ["p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "p", "q", "r", "s", "t"]
    assert ngram_char_fractions(words, [], [5])["dup_5"] == pytest.approx(10 / 15)
    # Nothing repeated: no top n-gram, no duplicates.
    assert ngram_char_fractions(["a", "b", "c", "d", "e", "f"], [2], [5]) == {"top_2": 0.0, "dup_5": 0.0}


# ---- C4 -----------------------------------------------------------------------------------


def _c4(text: str, config: C4Config | None = None) -> tuple[list[Document], list[tuple[str, str]], C4Filter]:
    step = C4Filter(config)
    removed: list[tuple[str, str]] = []
    step.on_removed = lambda d, why: removed.append((d.id, why))
    return list(step.run([doc(text)])), removed, step


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4_lorem_ipsum"),
        ("The function was written as f(x) { return x; } in the source.", "c4_curly_brace"),
    ],
)
def test_c4_page_rules(extra: str, reason: str) -> None:
    kept, removed, _ = _c4(PROSE + extra + "\n")
    assert kept == [] and removed == [("d", f"c4:{reason}")]


def test_c4_javascript_line_is_dropped_and_the_page_kept() -> None:
    kept, removed, step = _c4(PROSE + "Please enable JavaScript in your browser to see the comments.\n")
    assert removed == [] and [d.text for d in kept] == [PROSE]
    assert step.line_stats.removed == Counter({"javascript": 1})


def test_c4_line_rules_and_their_counts() -> None:
    text = "Home | About | Contact\n\n" + PROSE + "Short line here.\nShare this page...\nSee you later!\n"
    kept, removed, step = _c4(text)
    assert removed == []
    assert kept[0].text == PROSE  # dropped lines gone, the paragraph break kept
    stats = step.line_stats
    assert stats.removed == Counter({"no_terminal_punct": 2, "too_few_words": 2})
    assert stats.read == stats.kept + sum(stats.removed.values()) == 2 + 4


def test_c4_too_few_sentences_and_no_lines_left() -> None:
    _, removed, _ = _c4("This line has more than five words. So does this one, as you can see.\n")
    assert removed == [("d", "c4:c4_too_few_sentences")]
    _, removed, _ = _c4("Home\nAbout us\nContact\n")
    assert removed == [("d", "c4:c4_no_lines_left")]
    # Three sentences on one line are enough.
    kept, _, _ = _c4("It rained all day. The river rose fast. Nobody went to the market.\n")
    assert len(kept) == 1


def test_c4_bad_words(tmp_path: Path) -> None:
    words = tmp_path / "bad.txt"
    words.write_text("frobnicate\nwidget sauce\n\n", encoding="utf-8")
    config = C4Config(bad_words_file=str(words))
    _, removed, _ = _c4(PROSE + "Nobody should Frobnicate the lighthouse lens again.\n", config)
    assert removed == [("d", "c4:c4_bad_words")]
    _, removed, _ = _c4(PROSE + "They poured widget sauce over the lighthouse keeper.\n", config)
    assert removed == [("d", "c4:c4_bad_words")]
    kept, removed, _ = _c4(PROSE + "The frobnicated widgets were all sold at the market.\n", config)
    assert removed == [] and len(kept) == 1  # only whole words count
    with pytest.raises(UserError, match="does not exist"):
        C4Filter(C4Config(bad_words_file=str(tmp_path / "missing.txt")))
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="lists no words"):
        C4Filter(C4Config(bad_words_file=str(tmp_path / "empty.txt")))


# ---- FineWeb ------------------------------------------------------------------------------


def test_fineweb_short_lines() -> None:
    short = [f"Item {word} is here." for word in pseudo_words(14, seed=8)]
    text = "\n".join(short + SENTENCES[:6]) + "\n"
    fineweb = FineWebQualityFilter()
    assert fineweb.failed_rules(text) == ["fineweb_short_line_ratio"], fineweb.measure(text)
    assert fineweb.measure(text)["short_line_ratio"] == pytest.approx(14 / 20)


def test_fineweb_line_punctuation() -> None:
    lines = chunks(pseudo_words(200, seed=9), 20)  # 10 lines without punctuation
    fineweb = FineWebQualityFilter()
    text = "\n".join(lines[:8] + [lines[8] + "."]) + "\n"  # 1 of 9 = 0.11 <= 0.12
    assert fineweb.failed_rules(text) == ["fineweb_line_punct_ratio"]
    text = "\n".join(lines[:7] + [lines[7] + ".", lines[8] + "!"]) + "\n"  # 2 of 9 = 0.22
    assert fineweb.failed_rules(text) == []


def test_fineweb_duplicated_line_characters() -> None:
    lines = [line + "." for line in chunks(pseudo_words(200, seed=10), 20)]  # 10 lines of ~130 characters
    fineweb = FineWebQualityFilter()
    once = "\n".join(lines + lines[:1]) + "\n"
    twice = "\n".join(lines + lines[:2]) + "\n"
    assert fineweb.measure(once)["dup_line_char_ratio"] < 0.1 and fineweb.failed_rules(once) == []
    assert fineweb.failed_rules(twice) == ["fineweb_char_dup_ratio"]


# ---- counting through run -----------------------------------------------------------------

MIXED = [
    PROSE,
    " ".join(PROSE_WORDS[:30]),
    GOPHER_QUALITY_CASES["gopher_too_many_hashes"],
    REPETITION_CASES["dup_para_frac"][0],
    REPETITION_CASES["top_2_gram"][0],
    PROSE + "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n",
    PROSE + "Please enable JavaScript to read the comments.\n",
    "Home\nAbout\nContact\n",
    "",
]


@pytest.mark.parametrize("make", [GopherQualityFilter, GopherRepetitionFilter, C4Filter, FineWebQualityFilter])
def test_run_counts_add_up_and_reports_removals(make: type) -> None:
    step = make()
    removed: list[tuple[str, str]] = []
    step.on_removed = lambda d, why: removed.append((d.id, why))
    documents = [doc(text, f"doc{i}") for i, text in enumerate(MIXED)]
    kept = list(step.run(documents))
    stats = step.stats.as_dict()
    assert stats["read"] == len(MIXED) == stats["kept"] + stats["removed"]
    assert stats["kept"] == len(kept) and stats["removed"] == len(removed) > 0
    assert Counter(why.split(":", 1)[1] for _, why in removed) == step.stats.removed
    assert all(why.startswith(f"{step.name}:") for _, why in removed)
    assert "doc0" in {d.id for d in kept}
    assert {d.id for d in kept}.isdisjoint(i for i, _ in removed)


def test_whole_chain() -> None:
    documents = [doc(text, f"doc{i}") for i, text in enumerate(MIXED)]
    stream = iter(documents)
    steps = build_quality_filters()
    for step in steps:
        stream = step.run(stream)
    kept = list(stream)
    assert [d.id for d in kept] == ["doc0", "doc6"]
    assert kept[1].text == PROSE  # the javascript line was dropped by C4
    assert sum(step.stats.removed.total() for step in steps) == len(MIXED) - 2


def _varied_texts() -> list[str]:
    """Prose-like, repetitive and degenerate texts that break various rules, or none."""
    rng = random.Random(0)
    texts = ["", "word", "a a a a a a", "x " * 300, PROSE, *MIXED]
    for seed in range(40):
        text = synthetic_text(seed, rng.randint(20, 600))
        lines, words = text.split("\n"), text.split()
        phrase = " ".join(words[: rng.randint(2, 8)])
        texts += [
            text,
            "\n".join(lines + rng.choices(lines, k=rng.randint(1, len(lines)))),
            " ".join(phrase if rng.random() < 0.1 else word for word in words),
            "\n\n".join([text[: rng.randint(0, len(text))]] * rng.randint(1, 3)),
        ]
    return texts


VARIED = _varied_texts()
MORE_TOP_THAN_DUP_NS = GopherRepetitionConfig(max_top_ngram_char_fracs=[0.2, 0.18, 0.16, 0.15, 0.14], max_dup_ngram_char_fracs=[0.15, 0.14])


@pytest.mark.parametrize(
    "make",
    [GopherRepetitionFilter, lambda: GopherRepetitionFilter(MORE_TOP_THAN_DUP_NS), GopherQualityFilter, FineWebQualityFilter],
)
def test_reason_measures_lazily_but_is_the_first_failed_rule(make) -> None:
    # `reason` stops measuring at the first broken rule (for the repetition filter, n by n, even
    # where the rules ask for top_6 after dup_5); it must name the rule `failed_rules` names first.
    step = make()
    reasons = Counter()
    for text in VARIED:
        failed = step.failed_rules(text)
        reason = step.reason(doc(text))
        assert reason == (failed[0] if failed else None), text
        reasons[reason] += 1
    assert len(reasons) >= 3, reasons  # several different rules, and passing texts
