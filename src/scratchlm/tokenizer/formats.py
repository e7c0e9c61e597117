"""Other tokenizer formats: GPT-2's `encoder.json` + `vocab.bpe`, and HF `tokenizer.json`.

Both store tokens as printable strings through GPT-2's byte-to-unicode table (every byte gets a
visible character so that a vocabulary file is plain text), and both store merges as pairs of
such strings. We store raw bytes by rank; these functions translate.
"""

from __future__ import annotations

import heapq
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from scratchlm.errors import UserError
from scratchlm.tokenizer.bpe import PATTERNS
from scratchlm.tokenizer.tokenizer import Tokenizer


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    return {char: b for b, char in byte_to_unicode().items()}


def bytes_to_printable(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def printable_to_bytes(text: str, where: str) -> bytes:
    table = unicode_to_byte()
    try:
        return bytes(table[char] for char in text)
    except KeyError as error:
        raise UserError(f"{where} holds the token {text!r} with character {error.args[0]!r}, which is not in GPT-2's byte alphabet; it is not a byte-level BPE vocabulary.") from None


def derive_merges(tokenizer: Tokenizer) -> list[tuple[int, int]]:
    """Recover the merge that made each token from the ranks alone.

    BPE on a token's bytes, allowed only lower-ranked merges, stops at exactly two parts: the
    pair that was merged to make it. (This is how a tiktoken vocabulary becomes a merges list.)
    """
    ranks = {token: rank for rank, token in enumerate(tokenizer.ranks)}
    merges: list[tuple[int, int]] = []
    for rank in range(256, len(tokenizer.ranks)):
        token = tokenizer.ranks[rank]
        parts = _bpe_parts(token, ranks, below=rank)
        if len(parts) != 2:
            raise UserError(f"Token {rank} ({token[:40]!r}{'...' if len(token) > 40 else ''}) cannot be made by merging two lower-ranked tokens; these ranks are not a BPE vocabulary.")
        merges.append((ranks[parts[0]], ranks[parts[1]]))
    return merges


def _bpe_parts(data: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """`data` split by BPE with the merges ranked below `below`: the lowest-ranked adjacent pair
    merges first, the leftmost of equal pairs first (as `Tokenizer.reference_encode`).

    A heap of candidate pairs with lazy invalidation makes this O(n log n); rescanning every pair
    after each merge is O(n²), hours for a token of a megabyte.
    """
    n = len(data)
    # The parts as a linked list over byte offsets: end[i] is where the part starting at i ends,
    # 0 when no part starts at i; start_before[j] is the start of the part that ends at j.
    end = list(range(1, n + 1))
    start_before = list(range(-1, n))
    heap = [(rank, i, i + 1, i + 2) for i in range(n - 1) if (rank := ranks.get(data[i : i + 2], below)) < below]
    heapq.heapify(heap)

    def candidate(left: int) -> None:
        middle = end[left]
        if middle < n:
            right = end[middle]
            rank = ranks.get(data[left:right], below)
            if rank < below:
                heapq.heappush(heap, (rank, left, middle, right))

    while heap:
        _, left, middle, right = heapq.heappop(heap)
        if end[left] != middle or end[middle] != right:
            continue  # one of its two parts has merged with another neighbour since
        end[left], end[middle] = right, 0
        start_before[right] = left
        if left > 0:
            candidate(start_before[left])
        candidate(left)
    parts: list[bytes] = []
    offset = 0
    while offset < n:
        parts.append(data[offset : end[offset]])
        offset = end[offset]
    return parts


# ---- GPT-2 ----------------------------------------------------------------------------------


def load_gpt2_files(encoder_path: str | Path, merges_path: str | Path) -> Tokenizer:
    """Load OpenAI's GPT-2 `encoder.json` and `vocab.bpe`, checking that they agree."""
    encoder_path, merges_path = Path(encoder_path), Path(merges_path)
    for path in (encoder_path, merges_path):
        if not path.is_file():
            raise UserError(f"No such file: {path}; GPT-2's tokenizer needs both encoder.json and vocab.bpe.")
    encoder: dict[str, int] = json.loads(encoder_path.read_text(encoding="utf-8"))
    specials = {token: i for token, i in encoder.items() if token.startswith("<|") and token.endswith("|>")}
    by_id = {i: printable_to_bytes(token, str(encoder_path)) for token, i in encoder.items() if token not in specials}
    if sorted(by_id) != list(range(len(by_id))):
        raise UserError(f"{encoder_path} does not number its tokens 0..N-1 without gaps; it is not a GPT-2 encoder.json.")
    ranks = tuple(by_id[i] for i in range(len(by_id)))

    lines = [line for line in merges_path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#version")]
    if len(lines) != len(ranks) - 256:
        raise UserError(f"{merges_path} has {len(lines)} merges but {encoder_path} has {len(ranks) - 256} merged tokens; the two files are from different tokenizers.")
    index = {token: rank for rank, token in enumerate(ranks)}
    for rank, line in enumerate(lines, 256):
        left, right = (printable_to_bytes(part, str(merges_path)) for part in line.split(" "))
        if index.get(left + right) != rank:
            raise UserError(f"{merges_path} merge {rank - 256} ({line!r}) does not make token {rank} of {encoder_path}; the two files are from different tokenizers.")
    return Tokenizer(ranks, PATTERNS["gpt2"], specials, name="gpt2")


# ---- Hugging Face tokenizer.json --------------------------------------------------------------


def to_hf_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """An HF `tokenizers` ByteLevel BPE description that encodes exactly like `tokenizer`.

    The pre-split is an explicit regex `Split` followed by a `ByteLevel` step with its own regex
    off, so any pattern (GPT-2's, GPT-4's or custom) carries over unchanged.
    """
    vocab = {bytes_to_printable(token): rank for rank, token in enumerate(tokenizer.ranks)}
    merges = [
        [bytes_to_printable(tokenizer.ranks[left]), bytes_to_printable(tokenizer.ranks[right])]
        for left, right in derive_merges(tokenizer)
    ]
    added = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for s, i in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def _hf_pattern(pre_tokenizer: dict[str, Any] | None, path: Path) -> str:
    """The pre-split regex of an HF pre-tokenizer that we can reproduce exactly."""
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer and pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    pattern = None
    for step in steps:
        if step is None:
            continue
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {}) and step.get("behavior") == "Isolated":
            pattern = step["pattern"]["Regex"]
        elif step.get("type") == "ByteLevel":
            if step.get("add_prefix_space"):
                raise UserError(f"{path} adds a prefix space before encoding, which scratchlm does not reproduce; export it without add_prefix_space.")
            if step.get("use_regex", True):
                pattern = PATTERNS["gpt2"]
        else:
            raise UserError(f"{path} uses the pre-tokenizer {step.get('type')!r}; scratchlm reads byte-level BPE with a regex Split or ByteLevel pre-tokenizer only.")
    if pattern is None:
        raise UserError(f"{path} has no byte-level pre-tokenizer; scratchlm reads byte-level BPE tokenizers only.")
    return pattern


def load_hf_json(path: str | Path) -> Tokenizer:
    """Load an HF ByteLevel BPE `tokenizer.json` whose ids follow merge order (GPT-2 style)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"Cannot read {path} as JSON ({error}); pass an HF tokenizer.json.") from None
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(f"{path} holds a {model.get('type')!r} model; scratchlm reads BPE tokenizers only.")
    if data.get("normalizer"):
        raise UserError(f"{path} normalizes text before encoding, which scratchlm does not reproduce; use a tokenizer without a normalizer.")
    pattern = _hf_pattern(data.get("pre_tokenizer"), path)

    specials = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    by_id = {i: printable_to_bytes(token, str(path)) for token, i in model["vocab"].items() if token not in specials}
    if sorted(by_id) != list(range(len(by_id))):
        raise UserError(f"{path} does not number its tokens 0..N-1 without gaps below the special tokens; scratchlm cannot use its ids as ranks.")
    ranks = tuple(by_id[i] for i in range(len(by_id)))
    index = {token: rank for rank, token in enumerate(ranks)}
    previous = 255
    for merge in model.get("merges", []):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        rank = index.get(printable_to_bytes(left, str(path)) + printable_to_bytes(right, str(path)))
        if rank is None or rank <= previous:
            raise UserError(f"{path} has merges whose results are not numbered in merge order; scratchlm needs ids that follow merge priority.")
        previous = rank
    return Tokenizer(ranks, pattern, specials, name=path.parent.name or "hf")
