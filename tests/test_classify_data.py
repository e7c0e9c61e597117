"""Classification data: every format reads the same rows, every bad input is one sentence or a
counted, located skip, splits keep label shares, and the batches resume exactly."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard
from conftest import synthetic_text

from scratchlm.errors import UserError
from scratchlm.finetune.classify_data import (
    BAD_JSON,
    EMPTY_ENCODING,
    EMPTY_TEXT,
    LABEL_NOT_SCALAR,
    MISSING_LABEL,
    MISSING_TEXT,
    NOT_AN_OBJECT,
    TEXT_NOT_STRING,
    TOO_LONG,
    TRUNCATED,
    UNKNOWN_LABEL,
    WRONG_FIELD_COUNT,
    ClassifyBatches,
    Example,
    LabelSet,
    Row,
    Tally,
    default_pad_id,
    encode_rows,
    read_table,
    stratified_split,
)
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

RECORDS = [
    {"text": 'A "quoted" review, with a comma', "label": "pos"},
    {"text": "line one\nline two", "label": "neg"},
    {"text": "plain\ttab? no: plain", "label": "pos"},
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))


def texts_labels(rows: list[Row]) -> list[tuple[str, str]]:
    return [(row.text, row.label) for row in rows]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---- reading --------------------------------------------------------------------------------


def test_every_format_reads_the_same_rows(tmp_path: Path) -> None:
    import csv

    with (tmp_path / "t.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["id", "text", "label"])
        writer.writeheader()
        writer.writerows({"id": i, **r} for i, r in enumerate(RECORDS))
    lines = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()
    write_jsonl(tmp_path / "t.jsonl", RECORDS)
    (tmp_path / "t.json").write_text(json.dumps(RECORDS))
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "t.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress((tmp_path / "t.csv").read_bytes()))
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "t.parquet")
    want = [(r["text"], r["label"]) for r in RECORDS]
    (tmp_path / "T.TSV.GZ").write_bytes(gzip.compress(b"text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in RECORDS[:1]).encode()))
    assert texts_labels(read_table(tmp_path / "T.TSV.GZ")[0]) == [(RECORDS[0]["text"], "pos")]
    for name in ["t.csv", "t.jsonl", "t.json", "t.jsonl.gz", "t.jsonl.zst", "t.csv.gz", "t.parquet"]:
        rows, tally = read_table(tmp_path / name, "text", "label")
        assert texts_labels(rows) == want, name
        assert tally == Counter(), name
    rows, _ = read_table(tmp_path / "t.jsonl")
    assert [row.where for row in rows] == [f"{tmp_path / 't.jsonl'}:{n}" for n in (1, 2, 3)]
    rows, _ = read_table(tmp_path / "t.csv")  # the multi-line record ends on line 4
    assert [row.where.rsplit(":", 1)[1] for row in rows] == ["2", "4", "5"]


def test_tsv_splits_on_tabs_only_and_quotes_are_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.tsv", 'sentence\tlabel\nhe said "hi\t1\nit\'s "fine" ok\t0\n')
    rows, _ = read_table(path, "sentence", "label")
    assert texts_labels(rows) == [('he said "hi', "1"), ('it\'s "fine" ok', "0")]


def test_labels_are_strings_whatever_the_format_wrote(tmp_path: Path) -> None:
    records = [{"text": "a", "label": 1}, {"text": "b", "label": 1.0}, {"text": "c", "label": " 1 "}, {"text": "d", "label": True}, {"text": "e", "label": 2.5}]
    rows, _ = read_table(write_jsonl(tmp_path / "t.jsonl", records))
    assert [row.label for row in rows] == ["1", "1", "1", "true", "2.5"]
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": pa.array([3, None, 4], pa.int64())}), tmp_path / "t.parquet")
    rows, tally = read_table(tmp_path / "t.parquet")
    assert [row.label for row in rows] == ["3", "4"] and tally == {MISSING_LABEL: 1}
    assert tally.first[MISSING_LABEL] == f"{tmp_path / 't.parquet'}:2"


def test_bad_rows_are_skipped_counted_and_located(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [
        json.dumps({"text": "good", "label": "a"}),
        json.dumps({"label": "a"}),  # 2: no text
        json.dumps({"text": 7, "label": "a"}),  # 3
        json.dumps({"text": "  \n", "label": "a"}),  # 4
        json.dumps({"text": "x", "label": None}),  # 5
        json.dumps({"text": "x", "label": ""}),  # 6
        json.dumps({"text": "x", "label": [1]}),  # 7
        "{not json",  # 8
        "",  # blank lines are not rows
        json.dumps(["a list"]),  # 10
        json.dumps({"text": "also good", "label": "b"}),  # 11
    ]
    path.write_text("\n".join(lines) + "\n")
    rows, tally = read_table(path)
    assert texts_labels(rows) == [("good", "a"), ("also good", "b")]
    assert tally == {MISSING_TEXT: 1, TEXT_NOT_STRING: 1, EMPTY_TEXT: 1, MISSING_LABEL: 2, LABEL_NOT_SCALAR: 1, BAD_JSON: 1, NOT_AN_OBJECT: 1}
    assert tally.first[MISSING_LABEL] == f"{path}:5" and tally.first[NOT_AN_OBJECT] == f"{path}:10"
    assert f"2 missing label (first at {path}:5)" in tally.describe()


def test_a_csv_row_with_the_wrong_number_of_fields_is_skipped(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "text,label\nfine,a\n\nno label field\ntoo,many,fields\n,b\nok,\n")
    rows, tally = read_table(path)
    assert texts_labels(rows) == [("fine", "a")]
    assert tally == {WRONG_FIELD_COUNT: 2, EMPTY_TEXT: 1, MISSING_LABEL: 1}
    assert tally.first[WRONG_FIELD_COUNT] == f"{path}:4"


def test_tallies_add_up_keeping_the_first_places() -> None:
    a, b = Tally(), Tally()
    a.add(EMPTY_TEXT, "a:1")
    b.add(EMPTY_TEXT, "b:1")
    b.add(BAD_JSON, "b:2")
    a.update_from(b)
    assert a == {EMPTY_TEXT: 2, BAD_JSON: 1} and a.first == {EMPTY_TEXT: "a:1", BAD_JSON: "b:2"}
    assert a.describe() == "2 empty text (first at a:1), 1 bad JSON (first at b:2)"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", b"", r"empty.csv has no rows; give a file"),
        ("header.csv", b"text,label\n", r"header.csv has no rows"),
        ("empty.jsonl", b"\n\n", r"empty.jsonl has no rows"),
        ("empty.json", b"[]", r"empty.json has no rows"),
        ("t.txt", b"text,label\na,b\n", r"t.txt has an unknown extension; use one of .csv, .tsv, .jsonl, .json, .parquet"),
        ("t.csv", "text,label\ncaf\xe9,a\n".encode("latin-1"), r"t.csv is not UTF-8 text \(invalid byte at offset 14\); save it as UTF-8\."),
        ("t.jsonl.gz", b"not gzip at all", r"Cannot decompress .*t.jsonl.gz"),
        ("t.parquet", b"not parquet", r"Cannot read .*t.parquet as Parquet"),
        ("bad.jsonl", b"{bad\n[1]\n", r"bad.jsonl has no usable rows \(1 bad JSON \(first at .*bad.jsonl:1\), 1 not a JSON object"),
        ("blank.csv", b"text,label\n ,a\n", r"blank.csv has no usable rows \(1 empty text"),
    ],
)
def test_unusable_files_are_one_sentence_naming_the_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_table(tmp_path / name)


def test_a_missing_or_directory_path_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"No such file: .*nope.csv; check the data path\."):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(UserError, match=r"is not a file; give the path of a table file"):
        read_table(tmp_path)


def test_an_empty_parquet_file_has_no_rows(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}), tmp_path / "e.parquet")
    with pytest.raises(UserError, match=r"e.parquet has no rows"):
        read_table(tmp_path / "e.parquet")


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_a_missing_column_names_the_columns_and_the_closest(tmp_path: Path, suffix: str) -> None:
    records = [{"sentence": "a", "Label": "x"}, {"sentence": "b", "Label": "y"}]
    path = tmp_path / f"t.{suffix}"
    if suffix == "csv":
        write_csv(path, "sentence,Label\na,x\nb,y\n")
    elif suffix == "jsonl":
        write_jsonl(path, records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    with pytest.raises(UserError, match=rf"t.{suffix} has no text column 'text' \(its columns are 'sentence', 'Label'\); set the text column to one of them\."):
        read_table(path, "text", "Label")
    with pytest.raises(UserError, match=r"has no label column 'label' \(its columns are 'sentence', 'Label'; the closest is 'Label'\)"):
        read_table(path, "sentence", "label")
    with pytest.raises(UserError, match=r"has no text column 'sentense' .*the closest is 'sentence'"):
        read_table(path, "sentense", "Label")


# ---- labels and splits ---------------------------------------------------------------------


def rows_of(labels: list[str]) -> list[Row]:
    return [Row(f"text {i}", label, f"f:{i + 1}") for i, label in enumerate(labels)]


def test_label_sets_sort_numbers_as_numbers_and_check_their_names() -> None:
    assert LabelSet.from_rows(rows_of(["10", "2", "1", "2"])).names == ("1", "2", "10")
    assert LabelSet.from_rows(rows_of(["neg", "pos", "Neutral"])).names == ("Neutral", "neg", "pos")
    labels = LabelSet.from_names(["pos", "neg", 3])
    assert labels.names == ("pos", "neg", "3") and labels.id("neg") == 1 and "3" in labels and "x" not in labels and len(labels) == 3
    with pytest.raises(UserError, match=r"The labels 'a' are given more than once; list each label once\."):
        LabelSet.from_names(["a", "b", "a"])
    with pytest.raises(UserError, match=r"There is only 1 label \('a'\); a classifier needs at least two\."):
        LabelSet.from_rows(rows_of(["a", "a"]))
    with pytest.raises(UserError, match=r"A label is empty"):
        LabelSet.from_names(["a", " "])


def test_stratified_split_keeps_each_labels_share_and_is_seeded() -> None:
    rows = rows_of(["a"] * 50 + ["b"] * 30 + ["c"] * 7 + ["d"] * 1)
    train, val, test = stratified_split(rows, (0.8, 0.1, 0.1), seed=3)
    assert sorted(train + val + test) == sorted(rows)
    counts = [Counter(row.label for row in split) for split in (train, val, test)]
    assert counts[0] == {"a": 40, "b": 24, "c": 6, "d": 1}  # c: round(5.6) = 6; d keeps its one row for training
    assert counts[1] == {"a": 5, "b": 3}  # c: round(6.3) = 6 ends val too
    assert counts[2] == {"a": 5, "b": 3, "c": 1}
    for split in (train, val, test):
        assert split == sorted(split, key=rows.index)  # file order within a split
    assert stratified_split(rows, (0.8, 0.1, 0.1), seed=3) == (train, val, test)
    assert stratified_split(rows, (0.8, 0.1, 0.1), seed=4) != (train, val, test)
    two = stratified_split(rows, (0.5, 0.5), seed=0)
    assert len(two) == 2 and Counter(r.label for r in two[0])["a"] == 25


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.0, 1.0), (1.2, -0.2), (1.0,)])
def test_split_fractions_must_add_up_to_one(fractions: tuple[float, ...]) -> None:
    with pytest.raises(UserError, match=r"must be two or more non-negative numbers that add up to 1"):
        stratified_split(rows_of(["a", "b"] * 10), fractions)


def test_a_split_left_empty_is_an_error() -> None:
    with pytest.raises(UserError, match=r"4 rows are too few for the val split to get any at a fraction of 0.1; give more data"):
        stratified_split(rows_of(["a", "b"] * 2), (0.8, 0.1, 0.1))


# ---- encoding -------------------------------------------------------------------------------


def test_encoding_truncates_to_the_first_tokens_and_counts_it(tokenizer: Tokenizer) -> None:
    long, short = "the water of the country " * 10, "people"
    rows = [Row(long, "b", "f:1"), Row(short, "a", "f:2")]
    labels = LabelSet.from_names(["a", "b"])
    examples, tally = encode_rows(rows, tokenizer, labels, max_length=8)
    assert examples[0] == Example(tokenizer.encode_ordinary(long)[:8], 1, "f:1")
    assert examples[1] == Example(tokenizer.encode_ordinary(short), 0, "f:2")
    assert tally == {TRUNCATED: 1} and tally.first[TRUNCATED] == "f:1"
    eot = tokenizer.eot_id
    examples, _ = encode_rows(rows, tokenizer, labels, max_length=8, end_id=eot)
    assert examples[0].ids == tokenizer.encode_ordinary(long)[:7] + [eot] and examples[1].ids[-1] == eot
    examples, tally = encode_rows(rows, tokenizer, labels, max_length=8, overlong="skip")
    assert [e.where for e in examples] == ["f:2"] and tally == {TOO_LONG: 1}
    with pytest.raises(UserError, match=r"f:1 is \d+ tokens, more than the 8 that max_length 8 allows; raise max_length or let long texts be truncated\."):
        encode_rows(rows, tokenizer, labels, max_length=8, overlong="error")
    with pytest.raises(UserError, match=r"max_length 1 leaves no room for text; make it at least 2\."):
        encode_rows(rows, tokenizer, labels, max_length=1, end_id=eot)


def test_special_token_strings_are_plain_text(tokenizer: Tokenizer) -> None:
    examples, _ = encode_rows([Row("<|endoftext|>", "a", "f:1")], tokenizer, LabelSet.from_names(["a", "b"]), 64)
    assert tokenizer.eot_id not in examples[0].ids


def test_unknown_labels_are_one_sentence_or_counted(tokenizer: Tokenizer) -> None:
    rows = [Row("good", "pos", "val.csv:2"), Row("meh", "neutral", "val.csv:3")]
    labels = LabelSet.from_names(["neg", "pos"])
    with pytest.raises(UserError, match=r"val.csv:3 has the label 'neutral', which is not one of the labels \('neg', 'pos'\); correct the row"):
        encode_rows(rows, tokenizer, labels, 16)
    examples, tally = encode_rows(rows, tokenizer, labels, 16, unknown_label="skip")
    assert [e.label for e in examples] == [1] and tally == {UNKNOWN_LABEL: 1} and tally.first[UNKNOWN_LABEL] == "val.csv:3"


def test_a_text_with_no_tokens_is_skipped_and_counted(tokenizer: Tokenizer) -> None:
    examples, tally = encode_rows([Row("", "a", "cli:1"), Row("x", "b", "cli:2")], tokenizer, LabelSet.from_names(["a", "b"]), 16)
    assert [e.where for e in examples] == ["cli:2"] and tally == {EMPTY_ENCODING: 1}


# ---- batches --------------------------------------------------------------------------------


def examples_of(labels: list[int]) -> list[Example]:
    """Distinct examples of varied length 1..5; ids encode the index, so batches can be decoded."""
    return [Example([100 + i] * (1 + i % 5), label, f"f:{i + 1}") for i, label in enumerate(labels)]


def indices(batch) -> list[int]:
    return [int(row[0]) - 100 for row in batch.ids]


def test_batches_are_right_padded_with_lengths_and_labels() -> None:
    source = ClassifyBatches(examples_of([0, 1, 0, 1, 2]), 3, pad_id=7, seed=1)
    batch = source.next_batch()
    assert batch.ids.dtype == batch.lengths.dtype == batch.labels.dtype == torch.int64
    for row, i in enumerate(indices(batch)):
        n = 1 + i % 5
        assert batch.lengths[row] == n and batch.labels[row] == [0, 1, 0, 1, 2][i]
        assert batch.ids[row, :n].tolist() == [100 + i] * n and (batch.ids[row, n:] == 7).all()
        assert batch.mask()[row].tolist() == [True] * n + [False] * (batch.ids.shape[1] - n)
    assert batch.ids.shape == (3, int(batch.lengths.max()))
    assert torch.equal(batch.last_positions(), batch.lengths - 1)
    fixed = ClassifyBatches(examples_of([0, 1]), 2, pad_id=0, pad_to=9).next_batch()
    assert fixed.ids.shape == (2, 9)
    with pytest.raises(UserError, match=r"pad_to 3 is shorter than the longest example \(5 tokens\)"):
        ClassifyBatches(examples_of([0, 1] * 3), 2, pad_id=0, pad_to=3)
    with pytest.raises(UserError, match=r"There are no examples to train on"):
        ClassifyBatches([], 2, pad_id=0)


def test_epoch_order_sees_every_example_once_per_epoch_reshuffled() -> None:
    source = ClassifyBatches(examples_of([0, 1] * 6), 4, pad_id=0, seed=2)
    epochs = [[i for _ in range(3) for i in indices(source.next_batch())] for _ in range(3)]
    assert all(sorted(epoch) == list(range(12)) for epoch in epochs)
    assert epochs[0] != epochs[1] and source.epoch == 3 and source.batches == 9
    again = ClassifyBatches(examples_of([0, 1] * 6), 4, pad_id=0, seed=2)
    assert [i for _ in range(3) for i in indices(again.next_batch())] == epochs[0]
    other = ClassifyBatches(examples_of([0, 1] * 6), 4, pad_id=0, seed=3)
    assert [i for _ in range(3) for i in indices(other.next_batch())] != epochs[0]


def test_balanced_sampling_draws_classes_equally() -> None:
    labels = [0] * 40 + [1] * 5 + [2] * 3
    source = ClassifyBatches(examples_of(labels), 6, pad_id=0, balanced=True, seed=0)
    drawn = [i for _ in range(20) for i in indices(source.next_batch())]
    assert Counter(labels[i] for i in drawn) == {0: 40, 1: 40, 2: 40}
    class_two = [i for i in drawn if labels[i] == 2]
    assert all(sorted(class_two[k : k + 3]) == [45, 46, 47] for k in range(0, 40 - 3, 3))  # each small class cycles through all its examples
    plain = ClassifyBatches(examples_of(labels), 6, pad_id=0, seed=0)
    assert Counter(labels[i] for _ in range(8) for i in indices(plain.next_batch())) == {0: 40, 1: 5, 2: 3}


@pytest.mark.parametrize("balanced", [False, True])
def test_resume_continues_exactly_across_epochs(balanced: bool) -> None:
    def make() -> ClassifyBatches:
        return ClassifyBatches(examples_of([0, 0, 0, 1, 1, 2, 0]), 3, pad_id=0, balanced=balanced, seed=5)

    straight = make()
    want = [indices(straight.next_batch()) for _ in range(12)]
    first = make()
    got = [indices(first.next_batch()) for _ in range(5)]  # 15 draws: into the third epoch of 7
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    got += [indices(resumed.next_batch()) for _ in range(7)]
    assert got == want and resumed.state_dict() == straight.state_dict()


def test_a_state_from_other_data_or_settings_is_refused() -> None:
    state = ClassifyBatches(examples_of([0, 1, 0]), 2, pad_id=0).state_dict()
    for other in (
        ClassifyBatches(examples_of([0, 1, 1]), 2, pad_id=0),
        ClassifyBatches(examples_of([0, 1, 0]), 2, pad_id=0, balanced=True),
        ClassifyBatches(examples_of([0, 1, 0]), 2, pad_id=0, seed=1),
    ):
        with pytest.raises(UserError, match=r"The saved batch position is for .*; resume with the same data"):
            other.load_state_dict(state)
    ClassifyBatches(examples_of([0, 1, 0]), 3, pad_id=0).load_state_dict(state)  # a batch size change is fine


@pytest.mark.parametrize("balanced", [False, True])
def test_two_ranks_draw_what_one_process_draws_in_two_micro_batches(balanced: bool) -> None:
    examples = examples_of([0, 1, 1, 2, 0, 0, 1, 2, 2])
    single = ClassifyBatches(examples, 2, pad_id=0, balanced=balanced, seed=9)
    ranks = [ClassifyBatches(examples, 2, pad_id=0, balanced=balanced, seed=9, rank=r, world_size=2) for r in range(2)]
    for _ in range(10):
        assert indices(ranks[0].next_batch()) + indices(ranks[1].next_batch()) == indices(single.next_batch()) + indices(single.next_batch())
    assert ranks[0].state_dict() == ranks[1].state_dict() == {**single.state_dict(), "batches": 10}
    with pytest.raises(UserError, match=r"rank 2 is outside 0..1 for world_size 2"):
        ClassifyBatches(examples, 2, pad_id=0, rank=2, world_size=2)


def test_iter_eval_passes_once_in_order_and_leaves_training_alone() -> None:
    source = ClassifyBatches(examples_of([0, 1, 2, 0, 1, 2, 0]), 2, pad_id=0, seed=1)
    source.next_batch()
    state = source.state_dict()
    batches = list(source.iter_eval(3))
    assert [indices(b) for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert torch.cat([b.labels for b in batches]).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert [len(b.labels) for b in source.iter_eval()] == [2, 2, 2, 1]
    assert source.state_dict() == state


def test_the_whole_path_from_a_file_to_a_batch(tmp_path: Path, tokenizer: Tokenizer) -> None:
    path = write_csv(tmp_path / "t.csv", "text,label\n" + "".join(f"{synthetic_text(i, 5 + i).replace(',', ' ').replace(chr(10), ' ')},{'ab'[i % 2]}\n" for i in range(20)))
    rows, tally = read_table(path)
    train, _ = stratified_split(rows, (0.75, 0.25), seed=0)
    labels = LabelSet.from_rows(train)
    examples, counts = encode_rows(train, tokenizer, labels, max_length=12)
    assert tally == Counter() and len(examples) == 16 and counts[TRUNCATED] > 0  # 7.5 of each label rounds up
    batch = ClassifyBatches(examples, 4, pad_id=default_pad_id(tokenizer), pad_to=12).next_batch()
    assert batch.ids.shape == (4, 12) and int(batch.lengths.max()) <= 12
