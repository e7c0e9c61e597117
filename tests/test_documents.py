"""Readers: every input is either a document or a counted, located reason why not."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from scratchlm.data.documents import (
    MAX_EXAMPLES,
    Document,
    ReadStats,
    read_documents,
    read_jsonl,
    read_parquet,
    read_text,
)
from scratchlm.errors import UserError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_document_json_round_trip() -> None:
    doc = Document(id="a", text="naïve\nline", meta={"score": 0.5})
    assert Document.from_json(doc.to_json()) == doc
    with pytest.raises(ValueError):
        Document.from_json('{"id": 1, "text": "x"}')


def test_text_directory_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zed")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "c.md").write_text("see")
    (tmp_path / ".hidden.txt").write_text("secret")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("x")
    stats = ReadStats()
    docs = list(read_text([tmp_path], stats))
    assert [(d.id, d.text) for d in docs] == [("a.txt", "ay"), ("b/z.txt", "zed"), ("c.md", "see")]
    assert (stats.files, stats.documents, stats.bytes) == (3, 3, 8)


def test_text_file_given_directly_is_named_by_file_name(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_bytes("\ufeffhello".encode())
    docs = list(read_text(path, ReadStats()))
    assert docs == [Document(id="one.txt", text="hello")]  # the BOM is not text


def test_empty_and_binary_files_are_counted_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "ok.txt").write_text("fine")
    stats = ReadStats()
    docs = list(read_text(tmp_path, stats))
    assert [d.id for d in docs] == ["ok.txt"]
    assert (stats.files, stats.empty_files, stats.binary_files) == (3, 1, 1)
    assert stats.binary_examples == [str(tmp_path / "image.png")]
    assert "1 binary files skipped" in stats.summary() and "1 empty files" in stats.summary()


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    stats = ReadStats()
    [doc] = read_text(tmp_path, stats)
    assert doc.text == "caf\ufffd"
    assert stats.invalid_utf8_documents == 1
    assert stats.bytes == len(doc.text.encode())


def test_jsonl_broken_lines_are_located_and_the_rest_kept(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "data.jsonl",
        [
            json.dumps({"id": "x", "text": "first", "lang": "en"}),
            '{"text": "unterminated',
            "",
            json.dumps({"text": "no id"}),
            json.dumps(["not", "an", "object"]),
            json.dumps({"body": "wrong field"}),
            json.dumps({"text": 42}),
            json.dumps({"id": 7, "text": "numeric id"}),
        ],
    )
    stats = ReadStats()
    docs = list(read_jsonl(path, stats))
    assert [(d.id, d.text, d.meta) for d in docs] == [
        ("x", "first", {"lang": "en"}),
        ("data.jsonl:4", "no id", {}),
        ("7", "numeric id", {}),
    ]
    assert stats.malformed_lines == 4
    assert stats.documents + stats.malformed_lines == 7  # every non-blank line accounted for
    assert [e.split(": ")[0] for e in stats.malformed_examples] == [
        f"{path}:{n}" for n in (2, 5, 6, 7)
    ]
    assert "bad JSON" in stats.malformed_examples[0]
    assert "field 'text' is missing" in stats.malformed_examples[2]


def test_jsonl_custom_fields_and_nested_meta_round_trip(tmp_path: Path) -> None:
    written = Document(id="d1", text="body", meta={"source": "web"})
    path = write_lines(tmp_path / "docs.jsonl", [written.to_json()])
    assert list(read_jsonl(path, ReadStats())) == [written]

    path = write_lines(tmp_path / "qa.jsonl", [json.dumps({"key": "q1", "content": "c", "n": 1})])
    [doc] = read_jsonl(path, ReadStats(), text_field="content", id_field="key")
    assert doc == Document(id="q1", text="c", meta={"n": 1})


def test_jsonl_invalid_utf8_and_lone_surrogates_are_replaced(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n{"text": "half \\ud800 pair"}\n')
    stats = ReadStats()
    docs = list(read_jsonl(path, stats))
    assert [d.text for d in docs] == ["caf\ufffd", "half \ufffd pair"]
    assert stats.invalid_utf8_documents == 2


def test_malformed_examples_are_capped_but_all_counted(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "junk.jsonl", ["nope"] * (MAX_EXAMPLES + 5))
    stats = ReadStats()
    assert list(read_jsonl(path, stats)) == []
    assert stats.malformed_lines == MAX_EXAMPLES + 5
    assert len(stats.malformed_examples) == MAX_EXAMPLES


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".json.zst", ".jsonl.gz"])
def test_compressed_jsonl_reads_every_frame_or_member(tmp_path: Path, suffix: str) -> None:
    lines = [json.dumps({"id": str(i), "text": f"doc {i}"}) + "\n" for i in range(1000)]
    # Two frames (members), split mid-line, as `cat a.zst b.zst` or an appending writer makes.
    halves = ["".join(lines)[:12345].encode(), "".join(lines)[12345:].encode()]
    compress = zstandard.ZstdCompressor().compress if suffix.endswith(".zst") else gzip.compress
    path = tmp_path / f"shard{suffix}"
    path.write_bytes(b"".join(compress(half) for half in halves))
    stats = ReadStats()
    docs = list(read_documents([path], stats))
    assert [d.text for d in docs] == [f"doc {i}" for i in range(1000)]
    assert stats.malformed_lines == 0


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_truncated_compressed_file_is_a_user_error(tmp_path: Path, suffix: str) -> None:
    lines = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(10_000)).encode()
    compress = zstandard.ZstdCompressor().compress if suffix.endswith(".zst") else gzip.compress
    data = compress(lines)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="Cannot decompress .*cut"):
        list(read_jsonl(path, ReadStats()))


def test_parquet_streams_rows_with_meta_and_counts_null_text(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    table = pa.table({"id": ["a", None, "c"], "text": ["one", "two", None], "score": [1, 2, 3]})
    pq.write_table(table, path, row_group_size=2)
    stats = ReadStats()
    docs = list(read_parquet(path, stats))
    assert docs == [
        Document(id="a", text="one", meta={"score": 1}),
        Document(id="table.parquet:2", text="two", meta={"score": 2}),
    ]
    assert stats.malformed_examples == [f"{path}:3: field 'text' is missing"]


def test_parquet_missing_column_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x"], "url": ["u"]}), path)
    with pytest.raises(UserError, match="no column 'text'.*body, url"):
        list(read_parquet(path, ReadStats()))


def test_read_documents_dispatches_per_file_in_directories(tmp_path: Path) -> None:
    write_lines(tmp_path / "a.jsonl", [json.dumps({"id": "j", "text": "from jsonl"})])
    pq.write_table(pa.table({"id": ["p"], "text": ["from parquet"]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("from text")
    stats = ReadStats()
    docs = list(read_documents([tmp_path], stats))
    assert [(d.id, d.text) for d in docs] == [
        ("j", "from jsonl"),
        ("p", "from parquet"),
        ("c.txt", "from text"),
    ]
    assert (stats.files, stats.documents) == (3, 3)


def test_missing_path_fails_before_reading_anything(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("fine")
    with pytest.raises(UserError, match="No such file or directory: .*nope.txt"):
        read_documents([tmp_path / "ok.txt", tmp_path / "nope.txt"], ReadStats())
