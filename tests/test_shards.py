"""Token shards: round trips, llm.c's header, the group split, and every corruption a user can meet."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_text

from scratchlm.data.documents import Document
from scratchlm.data.shards import (
    HEADER_BYTES,
    MANIFEST,
    ShardConfig,
    ShardWriter,
    check_tokenizer,
    open_shard,
    read_documents_tokens,
    read_header,
    read_manifest,
    shard_documents,
    split_files,
    token_dtype,
    write_shards,
)
from scratchlm.errors import UserError
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_from_texts([synthetic_text(seed, 2000) for seed in range(2)], TokenizerTrainConfig(vocab_size=400, workers=1))


def make_documents(n: int = 24) -> list[Document]:
    """Documents of varied length in groups of three ("work" w0, w1, ...), with an empty one and hard text."""
    docs = [Document(f"d{i}", synthetic_text(100 + i, 20 + 13 * i), {"work": f"w{i // 3}"}) for i in range(n)]
    docs[4].text = ""
    docs[5].text = f"héllo 👋 {EOT} is plain text here\n\n"
    return docs


def shards(tmp_path: Path, tokenizer: Tokenizer, docs: list[Document], **config: object) -> tuple[Path, dict]:
    output = tmp_path / "shards"
    return output, write_shards(docs, tokenizer, output, ShardConfig(**{"workers": 2, **config}))


def split_of(manifest: dict, doc: Document, val_key: str = "") -> str:
    key = str(doc.meta[val_key]) if val_key else doc.id
    return "val" if key in manifest["split_rule"]["val_groups"] else "train"


def test_round_trip_documents_and_stream(tmp_path: Path, tokenizer: Tokenizer) -> None:
    docs = make_documents()
    output, manifest = shards(tmp_path, tokenizer, docs, shard_tokens=300, val_fraction=0.25)
    for split in ("train", "val"):
        expected = [doc.text for doc in docs if doc.text and split_of(manifest, doc) == split]
        assert [tokenizer.decode(ids) for ids in read_documents_tokens(output, split)] == expected
        stream = np.concatenate([open_shard(path, tokenizer.vocab_size) for path in split_files(output, split)])
        assert stream.tolist() == [t for text in expected for t in [*tokenizer.encode_ordinary(text), tokenizer.eot_id]]
    files = manifest["splits"]["train"]["files"]
    assert len(files) > 1
    assert all(f["tokens"] <= 300 or f["documents"] == 1 for f in files)
    assert manifest["dtype"] == "uint16" and manifest["tokenizer_hash"] == tokenizer.hash
    text_bytes = sum(len(doc.text.encode()) for doc in docs if split_of(manifest, doc) == "val")
    assert manifest["splits"]["val"]["bytes"] == text_bytes


def test_header_is_llmc_layout(tmp_path: Path, tokenizer: Tokenizer) -> None:
    output, manifest = shards(tmp_path, tokenizer, make_documents())
    entry = manifest["splits"]["train"]["files"][0]
    path = output / entry["name"]
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:5].tolist() == [20240520, 1, entry["tokens"], tokenizer.vocab_size, tokenizer.eot_id]
    assert not header[5:].any()
    assert path.stat().st_size == HEADER_BYTES + 2 * entry["tokens"]
    assert path.name == "train_000000.bin" and path.with_suffix(".idx").is_file()


def test_dtype_rule() -> None:
    assert token_dtype(400) == np.uint16
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(100277) == np.uint32


def test_uint32_files_round_trip(tmp_path: Path) -> None:
    documents = [[70000, 1, 65536], [99998], list(range(65530, 65545))]
    writer = ShardWriter(tmp_path, "train", vocab_size=100_000, eot_id=99_999, shard_tokens=10)
    for ids in documents:
        writer.add(ids, n_bytes=len(ids))
    summary = writer.close()
    assert [f["documents"] for f in summary["files"]] == [2, 1]
    first = tmp_path / "train_000000.bin"
    assert np.fromfile(first, dtype="<i4", count=3).tolist() == [20240801, 7, 6]
    assert read_header(first).dtype == np.uint32
    assert open_shard(first, 100_000).tolist() == [70000, 1, 65536, 99999, 99998, 99999]
    found = [ids for f in summary["files"] for ids in shard_documents(tmp_path / f["name"], 100_000)]
    assert found == documents


def test_split_keeps_groups_together_and_counts_add_up(tmp_path: Path, tokenizer: Tokenizer) -> None:
    docs = make_documents(60)
    output, manifest = shards(tmp_path, tokenizer, docs, val_key="work", val_fraction=0.2)
    sides = defaultdict(set)
    for doc in docs:
        if doc.text:
            sides[doc.meta["work"]].add(split_of(manifest, doc, "work"))
    assert all(len(s) == 1 for s in sides.values())
    assert {"train", "val"} <= set().union(*sides.values())
    splits = manifest["splits"]
    assert manifest["documents_in"] == 60 == splits["train"]["documents"] + splits["val"]["documents"] + manifest["empty_documents"]
    assert manifest["empty_documents"] == 1
    for split in splits.values():
        assert split["tokens"] == sum(f["tokens"] for f in split["files"])
        assert split["documents"] == sum(f["documents"] for f in split["files"])
    # The val share is as close to the fraction as whole groups allow.
    total = splits["train"]["tokens"] + splits["val"]["tokens"]
    largest_group = max(sum(len(tokenizer.encode_ordinary(d.text)) + 1 for d in docs if d.text and d.meta["work"] == w) for w in sides)
    assert abs(splits["val"]["tokens"] - 0.2 * total) <= largest_group


def test_split_is_deterministic_and_seeded(tmp_path: Path, tokenizer: Tokenizer) -> None:
    docs = make_documents(60)
    first = write_shards(docs, tokenizer, tmp_path / "a", ShardConfig(val_key="work", seed=3))
    again = write_shards(reversed(docs), tokenizer, tmp_path / "b", ShardConfig(val_key="work", seed=3))
    other = write_shards(docs, tokenizer, tmp_path / "c", ShardConfig(val_key="work", seed=4))
    assert first["split_rule"]["val_groups"] == again["split_rule"]["val_groups"]
    assert first["split_rule"]["val_groups"] != other["split_rule"]["val_groups"]
    rerun = write_shards(docs, tokenizer, tmp_path / "a", ShardConfig(val_key="work", seed=3))
    assert rerun == first


def test_explicit_val_keys(tmp_path: Path, tokenizer: Tokenizer) -> None:
    docs = make_documents()
    output, manifest = shards(tmp_path, tokenizer, docs, val_key="work", val_keys=["w1", "w3"])
    expected = [doc.text for doc in docs if doc.text and doc.meta["work"] in ("w1", "w3")]
    assert [tokenizer.decode(ids) for ids in read_documents_tokens(output, "val")] == expected
    assert manifest["split_rule"]["val_groups"] == ["w1", "w3"]


def test_no_val_split_when_fraction_is_zero(tmp_path: Path, tokenizer: Tokenizer) -> None:
    output, manifest = shards(tmp_path, tokenizer, make_documents(), val_fraction=0)
    assert list(manifest["splits"]) == ["train"]
    with pytest.raises(UserError, match="no 'val' split"):
        split_files(output, "val")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"val_key": "work", "val_keys": ["w1", "nope"]}, "'nope'"),
        ({"val_key": "author"}, "no meta field 'author'"),
        ({"val_key": "work", "val_keys": [f"w{i}" for i in range(8)]}, "train split would be empty"),
    ],
)
def test_split_mistakes_are_user_errors(tmp_path: Path, tokenizer: Tokenizer, config: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        shards(tmp_path, tokenizer, make_documents(), **config)
    assert list(tmp_path.iterdir()) == []  # no shards and no temporary directory left behind


def test_one_group_cannot_be_split(tmp_path: Path, tokenizer: Tokenizer) -> None:
    docs = [Document("only", "one document is not enough for two splits")]
    with pytest.raises(UserError, match="train split would be empty"):
        shards(tmp_path, tokenizer, docs)


def test_tokenizer_without_eot_and_empty_input(tmp_path: Path, tokenizer: Tokenizer) -> None:
    plain = Tokenizer(tokenizer.ranks, tokenizer.pattern, {})
    with pytest.raises(UserError, match="no <\\|endoftext\\|> token"):
        shards(tmp_path, plain, make_documents())
    with pytest.raises(UserError, match="None of the 2 documents"):
        shards(tmp_path, tokenizer, [Document("a", ""), Document("b", "")])


def test_rerun_replaces_shards_but_never_other_directories(tmp_path: Path, tokenizer: Tokenizer) -> None:
    output, _ = shards(tmp_path, tokenizer, make_documents(), shard_tokens=100)
    _, manifest = shards(tmp_path, tokenizer, make_documents())
    assert sorted(p.name for p in output.glob("*.bin")) == sorted(f["name"] for s in manifest["splits"].values() for f in s["files"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a shards directory"):
        write_shards(make_documents(), tokenizer, precious)
    assert (precious / "notes.txt").read_text() == "keep me"


# ---- corrupt shards ----------------------------------------------------------------------------


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    writer = ShardWriter(tmp_path, "train", vocab_size=1000, eot_id=999, shard_tokens=1000)
    writer.add([1, 2, 3, 500], n_bytes=4)
    writer.add([7, 8], n_bytes=2)
    writer.close()
    return tmp_path / "train_000000.bin"


def patch_header(path: Path, slot: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[4 * slot : 4 * slot + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(data))


def test_valid_shard_reads(shard: Path) -> None:
    assert open_shard(shard, 1000).tolist() == [1, 2, 3, 500, 999, 7, 8, 999]
    assert list(shard_documents(shard)) == [[1, 2, 3, 500], [7, 8]]


def test_bad_magic(shard: Path) -> None:
    patch_header(shard, 0, 12345)
    with pytest.raises(UserError, match="not a token shard \\(magic number 12345\\)"):
        open_shard(shard)


def test_unknown_version(shard: Path) -> None:
    patch_header(shard, 1, 2)
    with pytest.raises(UserError, match="unknown version 2"):
        open_shard(shard)


def test_truncated_shard(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated: its header promises 8 tokens but 6 are present; regenerate"):
        open_shard(shard)
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match="shorter than the 1,024-byte header"):
        open_shard(shard)


def test_trailing_bytes(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes() + b"\0\0")
    with pytest.raises(UserError, match="2 bytes after its 8 tokens"):
        open_shard(shard)


def test_token_id_out_of_range(shard: Path) -> None:
    with pytest.raises(UserError, match=f"{shard.name} holds token id 500 at position 3, but the vocabulary has 400 ids"):
        open_shard(shard, vocab_size=400)


def test_missing_shard_and_index_mismatch(shard: Path) -> None:
    with pytest.raises(UserError, match="No shard file"):
        open_shard(shard.with_name("train_000009.bin"))
    index = shard.with_suffix(".idx")
    data = bytearray(index.read_bytes())
    data[-8:] = np.int64(2).tobytes()  # the second document now seems to start inside the first
    index.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not end with the end-of-text token"):
        list(shard_documents(shard))
    index.write_bytes(bytes(data[:-8]))
    with pytest.raises(UserError, match="truncated or corrupt"):
        list(shard_documents(shard))


def test_manifest_problems(tmp_path: Path, tokenizer: Tokenizer) -> None:
    with pytest.raises(UserError, match="has no manifest.json"):
        read_manifest(tmp_path)
    output, manifest = shards(tmp_path, tokenizer, make_documents())
    check_tokenizer(manifest, tokenizer)
    other = train_from_texts([synthetic_text(9, 1500)], TokenizerTrainConfig(vocab_size=380, workers=1))
    with pytest.raises(UserError, match=f"made with another tokenizer \\(hash {tokenizer.hash[:12]}\\), not {other.hash[:12]}; re-tokenize"):
        check_tokenizer(manifest, other)
    (output / "train_000000.bin").unlink()
    with pytest.raises(UserError, match="listed in .* but missing"):
        split_files(output, "train")
    (output / MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(UserError, match="version 99"):
        read_manifest(output)
    (output / MANIFEST).write_text(json.dumps({"format": "scratchlm-documents", "version": 1}))
    with pytest.raises(UserError, match="not a shards manifest"):
        read_manifest(output)
    (output / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(output)


def test_val_split_is_cut_clean_of_train(tmp_path: Path, tokenizer: Tokenizer) -> None:
    shared = "the wind in the willows sang of rivers and boats and the long green days of summer by the water " * 2
    docs = [Document(f"t{i}", synthetic_text(300 + i, 400)) for i in range(6)]
    docs[2].text += "\n\n" + shared  # train has the passage...
    val = [Document("v0", synthetic_text(400, 300) + "\n\n" + shared + "\n\n" + synthetic_text(401, 300)), Document("v1", synthetic_text(402, 300))]
    output, manifest = shards(tmp_path, tokenizer, docs + val, val_keys=["v0", "v1"])
    report = manifest["val_decontamination"]
    assert report["train_documents_sharing"] == 1 and report["val_documents_cut"] == 1
    assert report["examples"][0]["val_group"] == "v0" and report["examples"][0]["train_group"] == "t2"
    # ...which GPT-3's rule cuts from v0 with 200 characters either side: two pieces stay.
    assert manifest["splits"]["val"]["documents"] == 3

    def grams(text: str) -> set[tuple[str, ...]]:  # independently of the decontamination code
        words = re.findall(r"[^\W_]+", text.lower())
        return {tuple(words[i : i + 13]) for i in range(len(words) - 12)}

    train = set().union(*(grams(tokenizer.decode(ids)) for ids in read_documents_tokens(output, "train")))
    val_texts = [tokenizer.decode(ids) for ids in read_documents_tokens(output, "val")]
    assert not set().union(*map(grams, val_texts)) & train
    assert val_texts[-1] == val[1].text  # untouched documents pass unchanged
    _, unchecked = shards(tmp_path, tokenizer, docs + val, val_keys=["v0", "v1"], decontaminate_val=False)
    assert unchecked["val_decontamination"] is None and unchecked["splits"]["val"]["documents"] == 2
