"""Instruction-tuning data: records in, prompt-masked token examples out, then padded batches.

The pipeline is four pure steps, each a function the training job calls in turn:

1. `read_records` reads a JSON list or JSONL file of Alpaca records (`instruction`, optional
   `input`, `output`) or chat records (`messages`: `{role, content}` objects) into
   conversations: lists of `Message` whose last one is the assistant's. A malformed file or
   record is a `UserError` naming the file and the record.
2. `split_holdout` sets records aside for evaluation, by record (never by turn, so no
   conversation has turns on both sides).
3. `encode_examples` turns every assistant turn into one `Example`. Its prompt is the
   conversation so far encoded by `ChatFormat` with the format's chat template: exactly the ids
   `scratchlm chat` and `serve` send at inference, so training and use see the same tokens.
   Its response is the assistant's text as ordinary text plus the format's end-of-turn special
   token, which teaches the model to stop. Only response tokens carry loss.
4. `InstructBatches` serves endless micro-batches (a trainer `BatchSource`): padded to the
   longest example in the batch (not to the context), with examples of similar length put
   together, in a seeded order that resumes exactly.

Label convention: `Example.labels` has the length of `Example.ids`; `labels[i]` is `ids[i]`
where token i is a response token (end-of-turn included) and -100 where it is prompt. Nothing
is shifted in an Example; the batch does the shift: `x = ids[:-1]`, `y = labels[1:]`, so `y[t]`
is the token that follows `x[:t+1]` or -100, exactly as the pretraining loader's (x, y).

A prompt format is data, a Jinja template in Hugging Face's convention: the same string goes
into the checkpoint's meta.json, so generate, chat, serve and to-hf all format conversations
the way the model was tuned.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchlm.errors import UserError
from scratchlm.generate.chat import ROLES, ChatFormat, Message
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer

IGNORE_INDEX = -100
"""The label of a token that carries no loss (the model's cross-entropy skips it)."""

Conversation = list[Message]
"""Messages in order; the last is the assistant's."""

Batch = tuple[torch.Tensor, torch.Tensor]


# ---- prompt formats ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFormat:
    """How conversations are laid out as text for one style of instruction tuning."""

    name: str
    template: str
    """A Jinja chat template in Hugging Face's convention (`messages`, `add_generation_prompt`),
    rendered by `ChatFormat`; stored with the checkpoint."""
    end_of_turn: str
    """A special token's string, appended to every response so that the model learns to stop
    (generation stops at any special token)."""
    special_tokens: tuple[str, ...] = ()
    """Special-token strings this format needs that a pretrained tokenizer may lack; the
    training job adds them (and embedding rows) before encoding."""


ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_INPUT = "\n\n### Input:\n"

# The Alpaca prompt of the book: the preamble (or the system message in its place), then per
# turn "### Instruction:" and "### Response:" blocks. An earlier answer ends with <|endoftext|>,
# as the model wrote it, before the next instruction's "\n\n". All literal text sits in Jinja
# string expressions and every tag strips the template's own whitespace, so the output does not
# depend on the environment's trim_blocks/lstrip_blocks (ours and transformers' differ in use).
ALPACA_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] -}}"
    "{%- else -%}"
    "{{- '" + ALPACA_PREAMBLE + "' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '\\n\\n### Instruction:\\n' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '\\n\\n### Response:\\n' + message['content'] + '<|endoftext|>' -}}"
    "{%- elif not loop.first -%}"
    "{{- raise_exception('a system message can only come first in the Alpaca format') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '\\n\\n### Response:\\n' -}}"
    "{%- endif -%}"
)

# ChatML exactly as Hugging Face models ship it (Qwen's and others' templates render the same).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

FORMATS: dict[str, PromptFormat] = {
    "alpaca": PromptFormat("alpaca", ALPACA_TEMPLATE, EOT),
    "chatml": PromptFormat("chatml", CHATML_TEMPLATE, "<|im_end|>", ("<|im_start|>", "<|im_end|>")),
}


def get_format(name: str) -> PromptFormat:
    """A built-in prompt format by name."""
    if name not in FORMATS:
        raise UserError(f"Unknown prompt format {name!r}; choose one of: {', '.join(FORMATS)}.")
    return FORMATS[name]


def require_special_tokens(tokenizer: Tokenizer, fmt: PromptFormat) -> None:
    """Raise a UserError naming the special tokens `fmt` needs that the tokenizer lacks."""
    needed = dict.fromkeys([*fmt.special_tokens, fmt.end_of_turn])  # ordered, without repeats
    missing = [token for token in needed if token not in tokenizer.special_tokens]
    if missing:
        raise UserError(
            f"The tokenizer lacks the special token{'s' * (len(missing) > 1)} {', '.join(missing)} that the {fmt.name} "
            "prompt format needs; add them to the tokenizer (and rows to the model's embeddings) before encoding."
        )


# ---- reading records --------------------------------------------------------------------------


def alpaca_conversation(instruction: str, input: str, output: str) -> Conversation:
    """An Alpaca record as a conversation: one user message (the instruction, then its input
    after "### Input:" when there is one) and the assistant's output. Rendered by the Alpaca
    template this is the book's prompt text, byte for byte."""
    user = instruction + (ALPACA_INPUT + input if input else "")
    return [Message("user", user), Message("assistant", output)]


def read_records(path: str | Path) -> list[Conversation]:
    """Conversations from a JSON list or a JSONL file of Alpaca or chat records (they may mix).

    The layout is told from the content, not the name: a file whose first character is `[` is
    one JSON list, anything else is one record per line (datasets often name JSONL `.json`).
    Blank JSONL lines are skipped. Every problem is a UserError naming the file and record.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"{path} {what}; pass a JSON or JSONL file of instruction records.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8 JSON or JSONL.") from None
    if not text.strip():
        raise UserError(f"{path} is empty; it needs instruction records, as a JSON list or one JSON object per line.")
    records = _parse_list(path, text) if text.lstrip().startswith("[") else _parse_lines(path, text)
    if not records:
        raise UserError(f"{path} holds no records; it needs instruction records, as a JSON list or one JSON object per line.")
    return [_conversation(record, where) for record, where in records]


def _parse_list(path: Path, text: str) -> list[tuple[Any, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); fix the file.") from None
    return [(record, f"{path} record {n}") for n, record in enumerate(data, 1)]


def _parse_lines(path: Path, text: str) -> list[tuple[Any, str]]:
    records = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{path} line {line_number} is not valid JSON ({error.msg}, column {error.colno}); write one JSON record per line, "
                "or the whole file as one JSON list."
            ) from None
        records.append((record, f"{path} record {len(records) + 1} (line {line_number})"))
    return records


def _conversation(record: Any, where: str) -> Conversation:
    if not isinstance(record, dict):
        raise UserError(f"{where} is a JSON {_json_type(record)}; each record must be an object with 'instruction' and 'output' (Alpaca) or 'messages' (chat).")
    if "messages" in record:
        return _chat_record(record["messages"], where)
    if "instruction" not in record and "output" not in record:
        raise UserError(f"{where} has neither 'instruction' and 'output' (Alpaca) nor 'messages' (chat); give it one of the two.")
    for field in ("instruction", "output"):
        if field not in record:
            raise UserError(f"{where} has no {field!r}; an Alpaca record needs 'instruction' and 'output' (and may have 'input').")
    for field in ("instruction", "input", "output"):
        if field in record and not isinstance(record[field], str):
            raise UserError(f"{where} has a {_json_type(record[field])} as {field!r}; 'instruction', 'input' and 'output' must be strings.")
    return alpaca_conversation(record["instruction"], record.get("input", ""), record["output"])


def _chat_record(messages: Any, where: str) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where} has 'messages' that is not a non-empty list; give a list of {{\"role\", \"content\"}} objects.")
    conversation = []
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise UserError(f"{where} message {n} is not an object with string 'role' and 'content'; give each message both.")
        if message["role"] not in ROLES:
            raise UserError(f"{where} message {n} has role {message['role']!r}; a role must be one of {', '.join(ROLES)}.")
        conversation.append(Message(message["role"], message["content"]))
    if not any(m.role == "assistant" for m in conversation):
        raise UserError(f"{where} has no assistant message; a conversation needs at least one assistant turn to learn from.")
    if conversation[-1].role != "assistant":
        # Messages after the last answer would teach nothing; refusing them keeps a Conversation
        # what the rest of the module expects, and tells the user their data is not what they think.
        raise UserError(f"{where} ends with a {conversation[-1].role} message; end every conversation with the assistant's turn.")
    return conversation


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ---- holding records out ----------------------------------------------------------------------


def split_holdout(conversations: Sequence[Conversation], fraction: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held_out): a seeded random `fraction` of the records held out for evaluation,
    both in their original order. At least one record is held out whenever fraction > 0."""
    if not 0 <= fraction < 1:
        raise UserError(f"The held-out fraction is {fraction}; set it to at least 0 and less than 1.")
    count = min(len(conversations) - 1, max(1, round(fraction * len(conversations)))) if fraction > 0 else 0
    if fraction > 0 and count < 1:
        raise UserError(f"{len(conversations)} record{'s' * (len(conversations) != 1)} cannot be split into training and held-out parts; add records or set the held-out fraction to 0.")
    held = set(np.random.default_rng(seed).permutation(len(conversations))[:count].tolist())
    train = [c for i, c in enumerate(conversations) if i not in held]
    return train, [c for i, c in enumerate(conversations) if i in held]


# ---- tokenizing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One assistant turn as tokens. `labels[i]` is `ids[i]` for response tokens (end-of-turn
    included) and -100 for prompt tokens; train on `x = ids[:-1]`, `y = labels[1:]`."""

    ids: list[int]
    labels: list[int]

    @property
    def num_targets(self) -> int:
        """Tokens this example is trained to predict (its response, as kept)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def encode_examples(
    conversations: Sequence[Conversation],
    tokenizer: Tokenizer,
    fmt: PromptFormat,
    max_length: int,
    *,
    min_prompt_share: float = 0.5,
) -> tuple[list[Example], Counter[str]]:
    """One Example per assistant turn, and counts of what happened on the way.

    The prompt is `ChatFormat(tokenizer, fmt.template).encode(messages before the turn)`; the
    response is `encode_ordinary(content)` + the ids of `fmt.end_of_turn`. Special-token strings
    inside messages stay text. The tokenizer must hold `fmt`'s special tokens already.

    Length: an example has at most `max_length` ids (prompt + response; the model reads all but
    the last). A longer one is cut by these rules, in this order:
    1. The prompt loses tokens from its start (its end, where the instruction ends and the
       assistant's turn begins, stays), but keeps at least `min_prompt_share` × max_length
       tokens (all of it if shorter; never fewer than 1, so the first response token has a
       token to be predicted from). Counted as "prompt_truncated".
    2. If that is not enough, the response loses tokens from its end (the end-of-turn token
       first). Counted as "response_truncated".
    3. If no response token would be left (only possible when min_prompt_share is near 1),
       the turn is skipped: "skipped_too_long".
    An empty (or whitespace-only) response teaches nothing but silence; its turn is skipped as
    "empty_response". The counter also holds "records" and "examples"; `describe` says it all.
    """
    if max_length < 2:
        raise UserError(f"max_length is {max_length}; an example needs at least 2 tokens (one of prompt, one of response).")
    if not 0 <= min_prompt_share <= 1:
        raise UserError(f"min_prompt_share is {min_prompt_share}; set it between 0 and 1.")
    require_special_tokens(tokenizer, fmt)
    chat = ChatFormat(tokenizer, fmt.template)  # compiles the template once
    end_ids = tokenizer.encode(fmt.end_of_turn, allowed_special="all")
    min_prompt = max(1, math.ceil(min_prompt_share * max_length))
    counts: Counter[str] = Counter(records=len(conversations), examples=0)
    examples: list[Example] = []
    for number, conversation in enumerate(conversations, 1):
        for turn, message in enumerate(conversation):
            if message.role != "assistant":
                continue
            if not message.content.strip():
                counts["empty_response"] += 1
                continue
            try:
                prompt = chat.encode(conversation[:turn])
            except UserError as error:
                raise UserError(f"Record {number} cannot be formatted: {error}") from None
            response = tokenizer.encode_ordinary(message.content) + end_ids
            fitted = _fit(prompt, response, max_length, min_prompt)
            if fitted is None:
                counts["skipped_too_long"] += 1
                continue
            kept_prompt, kept_response = fitted
            if len(kept_prompt) < len(prompt):
                counts["prompt_truncated"] += 1
            if len(kept_response) < len(response):
                counts["response_truncated"] += 1
            examples.append(Example(kept_prompt + kept_response, [IGNORE_INDEX] * len(kept_prompt) + kept_response))
    counts["examples"] = len(examples)
    return examples, counts


def _fit(prompt: list[int], response: list[int], max_length: int, min_prompt: int) -> tuple[list[int], list[int]] | None:
    """(prompt, response) cut to max_length by the rules of `encode_examples`, or None to skip."""
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep_prompt = min(len(prompt), max(min_prompt, max_length - len(response)))
    room = max_length - keep_prompt
    if room < 1:
        return None
    return prompt[len(prompt) - keep_prompt :], response[:room]


def describe(counts: Counter[str]) -> str:
    """One sentence for the log, e.g. "1,100 records → 1,100 examples; 3 responses truncated,
    1 skipped: too long"."""

    def some(n: int, noun: str) -> str:
        return f"{n:,} {noun}{'s' * (n != 1)}"

    parts = []
    if counts["prompt_truncated"]:
        parts.append(f"{some(counts['prompt_truncated'], 'prompt')} cut from the start")
    if counts["response_truncated"]:
        parts.append(f"{some(counts['response_truncated'], 'response')} truncated")
    if counts["skipped_too_long"]:
        parts.append(f"{counts['skipped_too_long']:,} skipped: too long")
    if counts["empty_response"]:
        parts.append(f"{counts['empty_response']:,} skipped: empty response")
    return f"{some(counts['records'], 'record')} → {some(counts['examples'], 'example')}; {', '.join(parts) or 'none truncated or skipped'}"


# ---- batching ---------------------------------------------------------------------------------


class InstructBatches:
    """Endless (x, y) micro-batches of examples, a trainer `BatchSource`.

    Dynamic padding: a batch is as long as its longest example (minus one, for the shift), not
    the context. Padding is on the right, where causal attention keeps it from every real token;
    x there holds `pad_id` (any valid id does; the eot id by convention) and y holds -100.

    Length bucketing: each epoch shuffles the examples with a generator seeded by (seed, epoch),
    cuts the order into windows of `bucket_batches` global batches, sorts each window by length
    and cuts it into batches, then shuffles the order of all the epoch's batches. Batches hold
    similar lengths (less padding), yet every epoch's batches and their order differ.

    Data-parallel ranks share one stream, as `TokenLoader`'s do: each step takes one global batch
    of micro_batch_size × world_size examples and rank r keeps its slice. A rank whose slice of
    an epoch's last, smaller batch is empty gets one example with every label -100, so that
    every rank takes part in every forward pass.

    The position is (epoch, batch within the epoch): `state_dict` saves it and the same data,
    settings and seed resume at exactly the batch an uninterrupted run would draw next.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        micro_batch_size: int,
        *,
        seed: int = 0,
        pad_id: int | None = None,
        bucket_batches: int = 64,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        """`pad_id` None means 0; pass `tokenizer.eot_id`."""
        if not examples:
            raise UserError("There are no instruction examples to batch; every record was skipped (see the counts logged above) or the data is empty.")
        if micro_batch_size < 1 or bucket_batches < 1 or seed < 0:
            raise UserError(f"micro_batch_size ({micro_batch_size}) and bucket_batches ({bucket_batches}) must be at least 1 and seed ({seed}) at least 0.")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside 0..{world_size - 1} for world_size {world_size}; check the launcher's settings.")
        self.micro_batch_size, self.seed, self.bucket_batches = micro_batch_size, seed, bucket_batches
        self.pad_id = 0 if pad_id is None else pad_id
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        # One flat array of ids and one of labels, cut by offsets: a list of Python ints costs
        # about 36 bytes a token, these 8, and rows are copied out by slicing.
        for example in examples:
            if len(example.ids) != len(example.labels) or len(example.ids) < 2:
                raise ValueError("An Example needs ids and labels of the same length, at least 2.")
        self._lengths = np.array([len(e.ids) for e in examples], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._lengths)])
        self._ids = np.fromiter((i for e in examples for i in e.ids), dtype=np.int64, count=int(self._offsets[-1]))
        self._labels = np.fromiter((i for e in examples for i in e.labels), dtype=np.int64, count=int(self._offsets[-1]))
        self.num_examples = len(examples)
        self.epoch, self.position, self.batches = 0, 0, 0
        self._order: list[np.ndarray] = []
        self._order_epoch = -1

    @property
    def global_batch_size(self) -> int:
        """Examples per step over all ranks."""
        return self.micro_batch_size * self.world_size

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank); the last may hold fewer examples."""
        return -(-self.num_examples // self.global_batch_size)

    @property
    def tokens_per_epoch(self) -> int:
        """Input tokens one epoch feeds the model over all ranks, padding not counted."""
        return int((self._lengths - 1).sum())

    @property
    def targets_per_epoch(self) -> int:
        """Tokens one epoch trains on (response tokens) over all ranks."""
        return int((self._labels != IGNORE_INDEX).sum() - (self._labels[self._offsets[:-1]] != IGNORE_INDEX).sum())

    def next_batch(self) -> Batch:
        """The next training (x, y), each (rows, longest - 1) int64 on the device."""
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = self._epoch_batches(self.epoch), self.epoch
        rows = self._order[self.position]
        self.position += 1
        self.batches += 1
        if self.position == len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
        return self._collate(rows)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of one epoch, in order: each an array of example numbers."""
        # Seeded by the pair, not seed + epoch, so that seed 1's epoch 0 is not seed 0's epoch 1.
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_examples)
        size = self.global_batch_size
        window = self.bucket_batches * size  # a multiple of the batch: only the epoch's last batch is short
        batches = []
        for start in range(0, self.num_examples, window):
            chunk = order[start : start + window]
            chunk = chunk[np.argsort(-self._lengths[chunk], kind="stable")]
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        # Without this the lengths would fall in a saw-tooth, window by window.
        return [batches[i] for i in rng.permutation(len(batches))]

    def _my_rows(self, rows: np.ndarray, micro_batch_size: int) -> tuple[np.ndarray, bool]:
        """This rank's share of a global batch, and whether it is a stand-in for an empty share."""
        mine = rows[self.rank * micro_batch_size : (self.rank + 1) * micro_batch_size]
        return (mine, False) if len(mine) else (rows[:1], True)

    def _collate(self, rows: np.ndarray, micro_batch_size: int | None = None) -> Batch:
        mine, empty = self._my_rows(rows, micro_batch_size or self.micro_batch_size)
        width = int(self._lengths[mine].max()) - 1
        x = np.full((len(mine), width), self.pad_id, dtype=np.int64)
        y = np.full((len(mine), width), IGNORE_INDEX, dtype=np.int64)
        for row, example in enumerate(mine.tolist()):
            start, end = int(self._offsets[example]), int(self._offsets[example + 1])
            x[row, : end - start - 1] = self._ids[start : end - 1]
            if not empty:
                y[row, : end - start - 1] = self._labels[start + 1 : end]
        return self._to_device(torch.from_numpy(x)), self._to_device(torch.from_numpy(y))

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def iter_eval(self, micro_batch_size: int | None = None) -> Iterator[Batch]:
        """Every example exactly once over all ranks, in a fixed order (longest first, so that
        batches pad little), in global batches of micro_batch_size × world_size; leaves the
        training position alone. Each rank yields the same number of batches."""
        size = (micro_batch_size or self.micro_batch_size) * self.world_size
        order = np.argsort(-self._lengths, kind="stable")
        for start in range(0, self.num_examples, size):
            yield self._collate(order[start : start + size], size // self.world_size)

    # ---- resume -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the batches stand, as JSON-able data; the same on every rank."""
        return {**self._identity(), "epoch": self.epoch, "position": self.position, "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; it must come from the same examples, batch size and seed."""
        saved = {key: state.get(key) for key in self._identity()}
        if saved != self._identity():
            raise UserError(
                f"The saved instruction-data position is for {saved}, not {self._identity()}; resume with the same data, "
                "prompt format, max_length, batch size, ranks and seed."
            )
        self.epoch, self.position, self.batches = int(state["epoch"]), int(state["position"]), int(state["batches"])

    def _identity(self) -> dict[str, Any]:
        """What a saved position is only meaningful for (the order depends on all of it)."""
        return {
            "examples": self.num_examples,
            "tokens": int(self._offsets[-1]),
            "global_batch_size": self.global_batch_size,
            "bucket_batches": self.bucket_batches,
            "seed": self.seed,
        }
