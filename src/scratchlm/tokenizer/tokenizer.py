"""The tokenizer: encode and decode through tiktoken built from our ranks; save and load.

A byte-level BPE tokenizer is fully described by three things: the token bytes in rank order
(rank = id = merge priority), the regex that pre-splits text into chunks, and the special tokens
with their ids. tiktoken's Rust core encodes with exactly this description, so it is our fast
path; `reference_encode` is the same algorithm in a few lines of Python, for clarity and tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import regex
import tiktoken

from scratchlm.errors import UserError
from scratchlm.paths import check_output_location
from scratchlm.tokenizer.bpe import PATTERNS

FORMAT_NAME = "scratchlm-tokenizer"
FORMAT_VERSION = 1
RANKS_FILE = "ranks.tiktoken"
CONFIG_FILE = "scratchlm_tokenizer.json"
HF_FILE = "tokenizer.json"

EOT = "<|endoftext|>"

SpecialSet = Literal["all"] | Collection[str]


@dataclass(frozen=True)
class Tokenizer:
    """A byte-level BPE tokenizer: token bytes by id, a pre-split pattern and special tokens."""

    ranks: tuple[bytes, ...]
    """Token bytes by id; the id is also the merge priority (lower merges first)."""
    pattern: str
    """The regex that pre-splits text into chunks; merges never cross a chunk boundary."""
    special_tokens: dict[str, int] = field(default_factory=dict)
    """Special token strings and their ids (above every mergeable id)."""
    name: str = "scratchlm"
    """A label shown by `stats` and stored with the tokenizer."""

    def __post_init__(self) -> None:
        if len(self.ranks) < 256 or len(set(self.ranks)) != len(self.ranks):
            raise UserError("A tokenizer needs all 256 single bytes and no duplicate tokens; the ranks are corrupt.")
        for token, token_id in self.special_tokens.items():
            if token_id < len(self.ranks):
                raise UserError(f"Special token {token!r} has id {token_id}, which collides with a mergeable token; give it an id of at least {len(self.ranks)}.")

    # ---- properties -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids the model's embedding must hold (highest id + 1)."""
        return max([len(self.ranks) - 1, *self.special_tokens.values()]) + 1

    @property
    def eot_id(self) -> int | None:
        """The id of `<|endoftext|>`, the document separator, if this tokenizer has it."""
        return self.special_tokens.get(EOT)

    @property
    def pattern_name(self) -> str:
        """`gpt2` or `gpt4` when the pattern is one of ours, else `custom`."""
        return next((name for name, p in PATTERNS.items() if p == self.pattern), "custom")

    @cached_property
    def hash(self) -> str:
        """SHA-256 of everything that decides the encoding: ranks, pattern and special tokens.

        Shards record it, so shards made with one tokenizer are never read with another.
        """
        digest = hashlib.sha256()
        digest.update(self.pattern.encode())
        digest.update(json.dumps(sorted(self.special_tokens.items())).encode())
        digest.update(_ranks_file_bytes(self.ranks))
        return digest.hexdigest()

    @cached_property
    def _ranks_by_bytes(self) -> dict[bytes, int]:
        return {token: rank for rank, token in enumerate(self.ranks)}

    @cached_property
    def _id_to_bytes(self) -> dict[int, bytes]:
        table = dict(enumerate(self.ranks))
        table.update({i: s.encode() for s, i in self.special_tokens.items()})
        return table

    @cached_property
    def _encoding(self) -> tiktoken.Encoding:
        return tiktoken.Encoding(
            name=f"{self.name}-{self.hash[:12]}",
            pat_str=self.pattern,
            mergeable_ranks=self._ranks_by_bytes,
            special_tokens=self.special_tokens,
        )

    # ---- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, allowed_special: SpecialSet = (), disallowed_special: SpecialSet = "all") -> list[int]:
        """Encode text. A special token's string in the text is an error unless it is allowed
        (then it becomes its id) or not disallowed (then it is encoded as ordinary text)."""
        try:
            return self._encoding.encode(text, allowed_special=_as_set(allowed_special), disallowed_special=_as_set(disallowed_special))
        except ValueError as error:
            raise UserError(
                f"The text contains a special token string ({_found_special(self, text)}); allow it to encode it as a "
                "special token, or disallow nothing to encode it as plain text."
            ) from error

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text with special-token strings treated as plain text."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        """Encode many texts as ordinary text; tiktoken releases the GIL, so threads scale."""
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def reference_encode(self, text: str, allowed_special: SpecialSet = ()) -> list[int]:
        """Pure-Python encoder, the same algorithm as tiktoken, for tests and for reading.

        Split out allowed special tokens; pre-split the rest with the pattern; in each chunk,
        repeatedly merge the adjacent pair whose concatenation has the lowest rank.
        """
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        ids: list[int] = []
        for segment, is_special in _split_specials(text, allowed):
            if is_special:
                ids.append(self.special_tokens[segment])
                continue
            for chunk in regex.findall(self.pattern, segment):
                ids.extend(self._bpe(chunk.encode("utf-8")))
        return ids

    def _bpe(self, chunk: bytes) -> list[int]:
        ranks = self._ranks_by_bytes
        if chunk in ranks:
            return [ranks[chunk]]
        parts = [chunk[i : i + 1] for i in range(len(chunk))]
        while len(parts) > 1:
            best_rank, best_at = None, -1
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_at = rank, i
            if best_rank is None:
                break
            parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
        return [ranks[part] for part in parts]

    # ---- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of a token sequence (may end mid-character)."""
        table = self._id_to_bytes
        try:
            return b"".join(table[int(i)] for i in ids)
        except KeyError as error:
            raise UserError(f"Token id {error.args[0]} is out of range for this tokenizer (vocabulary size {self.vocab_size}); check that the ids come from the same tokenizer.") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Decode to text; bytes that are not valid UTF-8 become U+FFFD, so this never fails on valid ids."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes([token_id])

    # ---- persistence ------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write `ranks.tiktoken`, `scratchlm_tokenizer.json` and an HF `tokenizer.json`.

        The files are written and synced in a temporary sibling directory that is then renamed
        to `directory`, replacing a tokenizer already there, so an interrupted save leaves the
        previous tokenizer (or none) behind, never a partial one.
        """
        from scratchlm.tokenizer.formats import to_hf_json

        directory = Path(directory)
        if directory.is_symlink():
            directory = directory.resolve()  # replace what the link points to, keeping the link
        check_output_location(directory, "the tokenizer directory")
        config = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "pattern_name": self.pattern_name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "vocab_size": self.vocab_size,
            "hash": self.hash,
        }
        files = {
            RANKS_FILE: _ranks_file_bytes(self.ranks),
            CONFIG_FILE: (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode(),
            HF_FILE: (json.dumps(to_hf_json(self), ensure_ascii=False) + "\n").encode(),
        }
        directory.parent.mkdir(parents=True, exist_ok=True)
        temporary = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)  # left by a crashed save of an earlier process with this id
        temporary.mkdir()
        try:
            for name, data in files.items():
                with open(temporary / name, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
            _replace_directory(temporary, directory)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a directory written by `save`, checking its content hash."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise UserError(f"{directory} is not a scratchlm tokenizer directory (no {CONFIG_FILE}); train one with `scratchlm tokenizer train`.")
        config = json.loads(config_path.read_text())
        if config.get("format") != FORMAT_NAME or config.get("version") != FORMAT_VERSION:
            raise UserError(f"{config_path} has format {config.get('format')} version {config.get('version')}; this scratchlm reads {FORMAT_NAME} version {FORMAT_VERSION}.")
        ranks = _parse_ranks_file((directory / RANKS_FILE).read_bytes(), directory / RANKS_FILE)
        tokenizer = cls(tuple(ranks), config["pattern"], dict(config["special_tokens"]), config.get("name", "scratchlm"))
        if tokenizer.hash != config["hash"]:
            raise UserError(f"The tokenizer in {directory} does not match its recorded hash (a file was edited or truncated); retrain or restore it.")
        return tokenizer


def _as_set(value: SpecialSet) -> Literal["all"] | set[str]:
    return "all" if value == "all" else set(value)


def _found_special(tokenizer: Tokenizer, text: str) -> str:
    return ", ".join(repr(s) for s in tokenizer.special_tokens if s in text) or "unknown"


def _split_specials(text: str, allowed: set[str]) -> list[tuple[str, bool]]:
    """Cut text into (segment, is_special) pieces at the allowed special tokens, longest first."""
    if not allowed:
        return [(text, False)]
    special_re = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
    pieces = special_re.split(text)
    # re.split with one capture group alternates text, special, text, ...
    return [(piece, index % 2 == 1) for index, piece in enumerate(pieces) if piece or index % 2 == 1]


def _replace_directory(new: Path, target: Path) -> None:
    """Rename `new` to `target`. An existing `target` is renamed aside first and removed only
    once `new` is in its place, so a crash leaves one of the two complete directories."""
    if not target.exists():
        os.replace(new, target)
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        try:
            os.replace(new, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old)
    # The renames are entries of the parent directory; syncing it makes them survive a power cut.
    parent = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(parent)
    finally:
        os.close(parent)


def _ranks_file_bytes(ranks: Sequence[bytes]) -> bytes:
    """tiktoken's `.tiktoken` format: one `base64(token) rank` line per token."""
    return b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for rank, token in enumerate(ranks))


def _parse_ranks_file(data: bytes, path: Path) -> list[bytes]:
    ranks: list[bytes] = []
    for line_number, line in enumerate(data.splitlines(), 1):
        try:
            token_b64, rank = line.split()
            if int(rank) != len(ranks):
                raise ValueError("ranks out of order")
            ranks.append(base64.b64decode(token_b64, validate=True))
        except ValueError as error:
            raise UserError(f"{path}:{line_number} is not a valid rank line ({error}); the tokenizer file is corrupt, retrain or restore it.") from None
    return ranks


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load any tokenizer scratchlm understands: our directory, GPT-2's `encoder.json` +
    `vocab.bpe` directory, or an HF `tokenizer.json` (file or directory)."""
    from scratchlm.tokenizer.formats import load_gpt2_files, load_hf_json

    path = Path(path)
    if not path.exists():
        raise UserError(f"No tokenizer at {path}; pass a directory written by `scratchlm tokenizer train`, a GPT-2 vocabulary directory or a tokenizer.json.")
    if path.is_file():
        return load_hf_json(path)
    if (path / CONFIG_FILE).is_file():
        return Tokenizer.load(path)
    if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
        return load_gpt2_files(path / "encoder.json", path / "vocab.bpe")
    if (path / HF_FILE).is_file():
        return load_hf_json(path / HF_FILE)
    raise UserError(f"{path} holds no tokenizer scratchlm can read ({CONFIG_FILE}, encoder.json + vocab.bpe, or {HF_FILE}).")
