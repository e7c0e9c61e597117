"""Autoregressive generation with a KV cache: prefill each prompt once, then one token per step.

`Engine` is what generation, chat and the server use: requests of any prompt length, each with
its own sampling settings, seed, stop ids and stop strings, join a running batch whenever there
is room (continuous batching) and leave it as soon as they finish, so a long answer never holds
up a short one. Each step returns the text every request produced, decoded incrementally.

`generate_tokens` is the plain loop over one fixed batch, with or without the cache; it is the
reference the engine is tested against.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from scratchlm.console import info
from scratchlm.errors import UserError
from scratchlm.generate.sampling import SamplingConfig, sample_next
from scratchlm.generate.stream import TextStream
from scratchlm.model.gpt import GPT
from scratchlm.model.kv_cache import KVCache
from scratchlm.tokenizer.tokenizer import Tokenizer

Overflow = Literal["error", "truncate"]
FinishReason = Literal["stop", "length", "cancelled"]


@torch.inference_mode()
def generate_tokens(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] = (),
    use_cache: bool = True,
    vocab_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,), step by step.

    Prompts may have different lengths: they are padded on the left (with their own first
    token) and the cache keeps each row's padding, so every row attends to and is positioned
    by its own tokens only, and gets what it would get alone (`use_cache=False` requires one
    length). A sequence that produced a stop id keeps producing it, so the caller can cut there; the
    loop ends when every sequence has stopped, after `max_new_tokens`, or at the context limit.
    `use_cache=False` recomputes the whole sequence at every step: slow, and the reference the
    cached path is tested against. `vocab_size` (the tokenizer's) keeps sampling away from the
    padding rows of an embedding rounded up for speed, which no tokenizer can decode.
    """
    sampling = sampling or SamplingConfig()
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens (--max-new-tokens) is {max_new_tokens}; it must be at least 1.")
    if not prompts:
        raise UserError("Generate takes one or more prompts.")
    if any(len(p) == 0 for p in prompts):
        raise UserError("The prompt is empty; give at least one token (e.g. <|endoftext|>).")
    longest = max(len(p) for p in prompts)
    if not use_cache and any(len(p) != longest for p in prompts):
        raise UserError("Generating without the KV cache takes prompts of one token length.")
    device = next(model.parameters()).device
    context = model.config.block_size
    if longest >= context:
        raise UserError(f"The prompt is {longest} tokens, but the model's context is {context}; shorten the prompt.")
    if longest + max_new_tokens > context:
        info(f"[yellow]note:[/yellow] the context ({context} tokens) leaves room for {context - longest} new tokens after the {longest}-token prompt, not {max_new_tokens}")
        max_new_tokens = context - longest
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    # Left padding with each row's first token: a repetition penalty then sees no foreign token.
    ids = torch.tensor([[p[0]] * (longest - len(p)) + list(p) for p in prompts], dtype=torch.long, device=device)  # (B, T)
    offsets = torch.tensor([longest - len(p) for p in prompts], dtype=torch.long, device=device)  # (B,)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    stopped = torch.zeros(len(prompts), dtype=torch.bool, device=device)

    was_training = model.training
    model.eval()
    try:
        cache = None
        if use_cache:
            dtype = next(model.parameters()).dtype
            c = model.config
            cache = KVCache(c.n_layer, len(prompts), c.n_kv_head, longest + max_new_tokens, c.head_dim, device, dtype)
            if bool(offsets.any()):
                cache.offsets = offsets
        step_input = ids
        for _ in range(max_new_tokens):
            logits, _ = model(step_input if use_cache else ids, cache=cache, last_only=True)  # (B, 1, V)
            token = sample_next(logits[:, -1, :vocab_size], sampling, generator, previous=ids)  # (B,)
            if stops.numel():
                token = torch.where(stopped, ids[:, -1], token)
                stopped |= torch.isin(token, stops)
            ids = torch.cat([ids, token[:, None]], dim=1)
            step_input = token[:, None]
            yield token
            if stops.numel() and bool(stopped.all()):
                break
    finally:
        model.train(was_training)




@dataclass
class Request:
    """One prompt to continue, and how."""

    prompt: list[int]
    """Token ids to continue."""
    max_new_tokens: int = 200
    """Tokens to generate at most (fewer when the context fills up, with a note)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    """Seed of this request's own random generator: the same seed gives the same text, whatever else shares the batch."""
    stop_ids: tuple[int, ...] = ()
    """Token ids that end the answer (not included in it), e.g. <|endoftext|>."""
    stop_strings: tuple[str, ...] = ()
    """Strings that end the answer (not included in it); they may span several tokens."""
    overflow: Overflow = "error"
    """A prompt that leaves no room in the context: "error", or "truncate" (drop its left side, with a note)."""


class Generation:
    """A request's progress in the engine: its tokens and text so far, and why it finished."""

    def __init__(self, request: Request, prompt: list[int], max_new_tokens: int, tokenizer: Tokenizer | None, notes: list[str], device: torch.device) -> None:
        self.request = request
        self.prompt = prompt
        """The prompt as generated from: the request's, or its right end when it was truncated."""
        self.max_new_tokens = max_new_tokens
        self.notes = notes
        """What changed from the request (a truncated prompt, fewer new tokens), one sentence each."""
        self.tokens: list[int] = []
        self.stream = TextStream(tokenizer, request.stop_strings) if tokenizer is not None else None
        self.generator = torch.Generator(device=device).manual_seed(request.seed) if request.seed is not None else None
        self.finish_reason: FinishReason | None = None
        self.cancelled = False
        """Set from any thread (a client went away); the engine drops the request at its next step."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Delta:
    """What one step added to one generation."""

    generation: Generation
    token: int | None
    """The new token, None when the step only finished the generation (a stop id, a cancel)."""
    text: str
    """Text released by this step: whole characters, never past a stop string."""
    finish_reason: FinishReason | None


class Engine:
    """Continuous batching over a model: `submit` requests, call `step` until `idle`.

    The running batch keeps one KV cache; rows of different lengths are padded on the left and
    the cache keeps each row's padding, so every row is computed as if it were alone. A step
    decodes one token for every running row, then prefills waiting requests into the free rows
    (their first token comes from the prefill) and merges them in; finished rows leave at once.
    `prepare`, `submit`, `enqueue` and `Generation.cancel` may be called from other threads than
    `step`: they read only what is fixed at construction and append to a thread-safe deque.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer | None = None, max_batch_size: int = 8, vocab_size: int | None = None) -> None:
        if max_batch_size < 1:
            raise UserError(f"The batch size (--max-batch-size) is {max_batch_size}; it must be at least 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.vocab_size = vocab_size or (tokenizer.vocab_size if tokenizer is not None else None)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.context = model.config.block_size
        self.waiting: deque[Generation] = deque()
        self.running: list[Generation] = []
        self.cache: KVCache | None = None
        self.history: torch.Tensor | None = None
        """(B, cache.length + 1): every row's tokens, padding included, and the token sampled last
        (the next step's input, not yet in the cache). Repetition penalties read it."""

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def submit(self, request: Request) -> Generation:
        """Check a request and queue it; it joins the batch at the next step with a free row."""
        return self.enqueue(self.prepare(request))

    def enqueue(self, generation: Generation) -> Generation:
        """Queue a prepared generation (see `prepare`)."""
        self.waiting.append(generation)
        return generation

    def prepare(self, request: Request) -> Generation:
        """The checked generation for a request, with its prompt and length fitted to the context."""
        if request.max_new_tokens < 1:
            raise UserError(f"max_new_tokens (--max-new-tokens) is {request.max_new_tokens}; it must be at least 1.")
        if not request.prompt:
            raise UserError("The prompt is empty; give at least one token (e.g. <|endoftext|>).")
        if request.stop_strings and self.tokenizer is None:
            raise UserError("Stop strings need the model's tokenizer to decode the text.")
        if request.overflow not in ("error", "truncate"):
            raise UserError(f"overflow (--overflow) is {request.overflow!r}; it must be 'error' or 'truncate'.")
        known = self.vocab_size or self.model.transformer.wte.num_embeddings
        if not all(0 <= t < known for t in request.prompt):
            raise UserError(f"The prompt holds a token id outside the vocabulary of {known}.")
        prompt, max_new, notes = list(request.prompt), request.max_new_tokens, []
        if request.overflow == "truncate" and len(prompt) + max_new > self.context:
            # Keep at least half the context of prompt: an answer with no question is no answer.
            keep = min(len(prompt), max(self.context - max_new, self.context // 2))
            if keep < len(prompt):
                notes.append(f"the prompt was {len(prompt)} tokens; its first {len(prompt) - keep} were dropped to fit the {self.context}-token context")
                prompt = prompt[len(prompt) - keep :]
        if len(prompt) >= self.context:
            raise UserError(f"The prompt is {len(prompt)} tokens, but the model's context is {self.context}; shorten the prompt, or let it be cut on the left with --overflow truncate.")
        if len(prompt) + max_new > self.context:
            notes.append(f"the context ({self.context} tokens) leaves room for {self.context - len(prompt)} new tokens after the {len(prompt)}-token prompt, not {max_new}")
            max_new = self.context - len(prompt)
        return Generation(request, prompt, max_new, self.tokenizer, notes, self.device)

    @torch.inference_mode()
    def step(self) -> list[Delta]:
        """Advance every running request by one token and admit waiting ones; what each produced.

        The model runs in eval mode and goes back to the mode it was in: a model sampled from
        during training goes on training with its dropout."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self._step()
        finally:
            self.model.train(was_training)

    def _step(self) -> list[Delta]:
        deltas = [self._finish(g, "cancelled") for g in self.running if g.cancelled]
        self._drop_finished()
        if self.running:
            assert self.cache is not None and self.history is not None
            logits, _ = self.model(self.history[:, -1:], cache=self.cache, last_only=True)  # (B, 1, V)
            tokens = self._sample(self.running, logits[:, -1], self.history)  # (B,)
            self.history = torch.cat([self.history, tokens[:, None]], dim=1)
            deltas += self._emit(self.running, tokens)
        admitted = []
        while self.waiting and len(self.running) + len(admitted) < self.max_batch_size:
            generation = self.waiting.popleft()
            if generation.cancelled:
                deltas.append(self._finish(generation, "cancelled"))
            else:
                admitted.append(generation)
        if admitted:
            deltas += self._admit(admitted)
        self._drop_finished()
        return deltas

    def run(self, requests: Sequence[Request], on_delta: Callable[[Delta], None] | None = None) -> list[Generation]:
        """Generate every request to its end; `on_delta` sees each step's output as it comes."""
        generations = [self.submit(r) for r in requests]
        while not self.idle:
            for delta in self.step():
                if on_delta is not None:
                    on_delta(delta)
        return generations

    def _admit(self, generations: list[Generation]) -> list[Delta]:
        """Prefill new requests together and merge them into the running batch."""
        c = self.model.config
        longest = max(len(g.prompt) for g in generations)
        # Left padding with each row's first token: a repetition penalty then sees no foreign token.
        ids = torch.tensor([[g.prompt[0]] * (longest - len(g.prompt)) + g.prompt for g in generations], dtype=torch.long, device=self.device)  # (b, T)
        offsets = torch.tensor([longest - len(g.prompt) for g in generations], dtype=torch.long, device=self.device)  # (b,)
        room = max(g.max_new_tokens for g in generations)
        cache = KVCache(c.n_layer, len(generations), c.n_kv_head, longest + room, c.head_dim, self.device, self.dtype)
        cache.offsets = offsets if bool(offsets.any()) else None
        logits, _ = self.model(ids, cache=cache, last_only=True)  # (b, 1, V)
        tokens = self._sample(generations, logits[:, -1], ids)  # (b,)
        history = torch.cat([ids, tokens[:, None]], dim=1)  # (b, T + 1)
        if self.cache is None or self.history is None:
            self.cache, self.history = cache, history
        else:
            self.history = torch.cat(_pad_to_same_length(self.history, history))
            self.cache.merge(cache)
        self.running += generations
        return self._emit(generations, tokens)

    def _sample(self, generations: list[Generation], logits: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Next tokens (B,) from last-position logits (B, V): rows that share settings (and no
        seed of their own) are sampled together, a seeded row alone with its own generator."""
        logits = logits[:, : self.vocab_size]
        groups: dict[tuple, list[int]] = {}
        for row, g in enumerate(generations):
            groups.setdefault((dataclasses.astuple(g.request.sampling), id(g.generator) if g.generator else None), []).append(row)
        if len(groups) == 1:
            g = generations[0]
            return sample_next(logits, g.request.sampling, g.generator, previous=previous)
        tokens = torch.empty(len(generations), dtype=torch.long, device=self.device)
        for rows in groups.values():
            g = generations[rows[0]]
            index = torch.tensor(rows, device=self.device)
            tokens[index] = sample_next(logits[index], g.request.sampling, g.generator, previous=previous[index])
        return tokens

    def _emit(self, generations: list[Generation], tokens: torch.Tensor) -> list[Delta]:
        deltas = []
        for g, token in zip(generations, tokens.tolist()):
            if g.cancelled:
                deltas.append(self._finish(g, "cancelled"))
            elif token in g.request.stop_ids:
                deltas.append(self._finish(g, "stop"))
            else:
                g.tokens.append(token)
                text = g.stream.push(token) if g.stream is not None else ""
                reason: FinishReason | None = None
                if g.stream is not None and g.stream.stopped:
                    reason = "stop"
                elif len(g.tokens) >= g.max_new_tokens:
                    reason = "length"
                if reason is not None:
                    text += g.stream.finish() if g.stream is not None else ""
                    g.finish_reason = reason
                deltas.append(Delta(g, token, text, reason))
        return deltas

    @staticmethod
    def _finish(generation: Generation, reason: FinishReason) -> Delta:
        text = generation.stream.finish() if generation.stream is not None and reason == "stop" else ""
        generation.finish_reason = reason
        return Delta(generation, None, text, reason)

    def _drop_finished(self) -> None:
        keep = [row for row, g in enumerate(self.running) if not g.finished]
        if len(keep) == len(self.running):
            return
        self.running = [self.running[row] for row in keep]
        if not keep:
            self.cache, self.history = None, None
            return
        assert self.cache is not None and self.history is not None
        rows = torch.tensor(keep, device=self.device)
        self.cache.select(rows)
        self.history = self.history[rows]
        self.history = self.history[:, self.cache.trim_left() :]


def _pad_to_same_length(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad the shorter of two (B, T) id tensors with each row's first id."""
    n = a.size(1) - b.size(1)
    if n > 0:
        b = torch.cat([b[:, :1].expand(-1, n), b], dim=1)
    elif n < 0:
        a = torch.cat([a[:, :1].expand(-1, -n), a], dim=1)
    return a, b


def run_samples(engine: Engine, request: Request, num_samples: int = 1, seed: int | None = None, on_delta: Callable[[int, Delta], None] | None = None) -> list[Generation]:
    """`num_samples` samples of one request as one batch, drawing from one generator seeded with
    `seed`; `on_delta(sample_index, delta)` streams each step's output. Notes go to the console once."""
    if num_samples < 1:
        raise UserError(f"num_samples (--num-samples) is {num_samples}; it must be at least 1.")
    generations = [engine.prepare(request) for _ in range(num_samples)]
    for note in generations[0].notes:
        info(f"[yellow]note:[/yellow] {note}")
    shared = torch.Generator(device=engine.device).manual_seed(seed) if seed is not None else None
    index = {}
    for i, generation in enumerate(generations):
        generation.generator = shared
        index[id(generation)] = i
        engine.enqueue(generation)
    while not engine.idle:
        for delta in engine.step():
            if on_delta is not None and id(delta.generation) in index:
                on_delta(index[id(delta.generation)], delta)
    return generations


def generate(
    model: GPT,
    prompt: Sequence[int],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    stop_ids: Sequence[int] = (),
    num_samples: int = 1,
    on_token: Callable[[int, int], None] | None = None,
    vocab_size: int | None = None,
) -> list[list[int]]:
    """New tokens for `num_samples` samples of one prompt, each cut before its first stop id.

    `on_token(sample_index, token_id)` streams tokens as they come.
    """
    engine = Engine(model, max_batch_size=max(num_samples, 1), vocab_size=vocab_size)

    def forward(sample: int, delta: Delta) -> None:
        if delta.token is not None and on_token is not None:
            on_token(sample, delta.token)

    request = Request(list(prompt), max_new_tokens, sampling or SamplingConfig(), None, tuple(stop_ids))
    return [g.tokens for g in run_samples(engine, request, num_samples, seed, forward)]
