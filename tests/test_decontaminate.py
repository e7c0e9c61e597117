import json
import random
import re

import pytest

from scratchlm.data.decontaminate import (
    Decontaminate,
    DecontaminateConfig,
    NGramIndex,
    cut,
    decontaminate_texts,
)
from scratchlm.data.documents import Document
from scratchlm.errors import UserError

VOCAB = ["apple", "river", "stone", "cloud", "green", "seven", "table", "window", "music", "paper", "garden", "silver", "lamp", "forest"]


def filler(seed: int, chars: int) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    while len(" ".join(words)) < chars:
        words.append(rng.choice(VOCAB) + str(rng.randrange(1000)))
    return " ".join(words)


PASSAGE = (
    "The quick brown fox jumps over the lazy dog while seventeen purple elephants dance "
    "quietly beneath an enormous crystal chandelier in the abandoned ballroom of the old castle by moonlight"
)  # 30 words


def benchmark(tmp_path, records=None):
    path = tmp_path / "bench.jsonl"
    records = records or [{"id": "q1", "question": PASSAGE, "answer": "yes"}, {"id": "q2", "question": filler(99, 300)}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def planted_doc() -> Document:
    before, after = filler(1, 900), filler(2, 900)
    text = f"{before} {PASSAGE}. {after}"
    assert 1900 < len(text) < 2100
    return Document(id="doc", text=text)


def run(step, docs):
    out = list(step.run(docs))
    assert step.stats.read == step.stats.kept + sum(step.stats.removed.values())
    return out


def test_drop_mode_removes_planted_passage_and_reports_it(tmp_path):
    path = benchmark(tmp_path)
    step = Decontaminate(DecontaminateConfig(benchmarks=[str(path)], text_fields=["question", "answer"]))
    clean = Document(id="clean", text=filler(3, 2000))
    out = run(step, [planted_doc(), clean])
    assert [d.id for d in out] == ["clean"]
    assert step.stats.removed == {"contaminated": 1}
    assert step.matches_total == 1
    match = step.matches[0]
    assert match["document_id"] == "doc"
    assert match["benchmark_item"] == "bench.jsonl:q1"
    assert match["benchmark_file"] == str(path)
    assert match["ngram_example"].lower() in PASSAGE.lower()
    assert step.details()["index"]["items"] == 2


def test_cut_mode_removes_window_and_keeps_long_pieces(tmp_path):
    path = benchmark(tmp_path)
    step = Decontaminate(DecontaminateConfig(benchmarks=[str(path)], text_fields=["question"], mode="cut"))
    doc = planted_doc()
    out = run(step, [doc])
    assert step.stats.kept == 1 and step.pieces_out == len(out) == 2
    start = doc.text.index(PASSAGE)
    end = start + len(PASSAGE)
    assert out[0].text == doc.text[: start - 200].strip()
    assert out[1].text == doc.text[end + 200 :].strip()
    for k, piece in enumerate(out):
        assert piece.id == f"doc#{k}"
        assert len(piece.text) >= 200
        assert "elephants" not in piece.text
        assert piece.meta == {"decontaminated": 1, "piece": k, "pieces": 2}


def test_cut_mode_drops_document_without_long_pieces(tmp_path):
    path = benchmark(tmp_path)
    step = Decontaminate(DecontaminateConfig(benchmarks=[str(path)], text_fields=["question"], mode="cut"))
    out = run(step, [Document(id="d", text=f"{filler(4, 150)} {PASSAGE} {filler(5, 150)}")])
    assert out == [] and step.stats.removed == {"contaminated_all_pieces": 1}


def test_twelve_shared_words_are_kept_thirteen_are_not():
    words = PASSAGE.split()
    index = NGramIndex.from_texts([("item", PASSAGE)], n=13)
    assert index.matches(f"{filler(6, 300)} {' '.join(words[:12])} {filler(7, 300)}") == []
    assert len(index.matches(f"{filler(6, 300)} {' '.join(words[:13])} {filler(7, 300)}")) == 1


def test_case_and_punctuation_do_not_matter():
    index = NGramIndex.from_texts([("item", PASSAGE)])
    noisy = " ".join(w.upper() + ("," if i % 3 else "!?") for i, w in enumerate(PASSAGE.split()))
    assert len(index.matches(f"Intro -- {noisy} (end)")) == 30 - 13 + 1


def test_short_item_matches_by_whole_length():
    item = "seventeen purple elephants dance quietly beneath the chandelier tonight"  # 9 words
    index = NGramIndex.from_texts([("short", item), ("tiny", "yes no")], n=13, min_item_words=8)
    assert index.skipped_short_items == 1 and index.lengths == [9]
    text = f"{filler(8, 200)} {item.title()}. {filler(9, 200)}"
    [(start, end, item_id)] = index.matches(text)
    assert item_id == "short" and text[start:end].lower() == item
    assert index.matches(" ".join(item.split()[:8])) == []


def test_index_offsets_agree_with_naive_search():
    rng = random.Random(0)
    tokens = [rng.choice(VOCAB) for _ in range(400)]
    items = [(f"i{j}", " ".join(tokens[s : s + 20])) for j, s in enumerate([10, 150, 300])]
    text = " ".join(t.capitalize() if i % 7 == 0 else t for i, t in enumerate(tokens))
    index = NGramIndex.from_texts(items, n=13)
    spans = {(s, e) for s, e, _ in index.matches(text)}
    # naive: every 13-word window of the text whose lowercased words are in some item
    words = [(m.start(), m.end(), m.group().lower()) for m in re.finditer(r"\w+", text)]
    item_grams = set()
    for _, item_text in items:
        w = item_text.split()
        item_grams |= {tuple(w[i : i + 13]) for i in range(len(w) - 12)}
    naive = {
        (words[i][0], words[i + 12][1])
        for i in range(len(words) - 12)
        if tuple(x[2] for x in words[i : i + 13]) in item_grams
    }
    assert naive and spans == naive


def test_text_benchmark_paragraphs_and_missing_file(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text(f"{PASSAGE}\n\n\n{filler(10, 200)}\n")
    index = NGramIndex.from_files([path])
    assert index.item_ids == ["heldout.txt#1", "heldout.txt#2"]
    with pytest.raises(UserError):
        Decontaminate(DecontaminateConfig(benchmarks=[str(tmp_path / "missing.jsonl")]))
    with pytest.raises(UserError):
        DecontaminateConfig(mode="shred")


def test_decontaminate_texts_helper_and_cut():
    train = [f"{filler(11, 500)} {PASSAGE} {filler(12, 500)}", filler(13, 500)]
    result = decontaminate_texts(train, [PASSAGE])
    assert result.texts == [train[1]] and result.stats.removed == {"contaminated": 1}
    assert result.step.matches[0]["benchmark_item"] == "heldout:0"
    assert cut("a" * 10, [(4, 6, 0)], 2) == (1, ["aa", "aa"])
