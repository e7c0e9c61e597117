"""Autoregressive generation with a KV cache: prefill the prompt once, then one token per step."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from scratchlm.console import info
from scratchlm.errors import UserError
from scratchlm.generate.sampling import SamplingConfig, sample_next
from scratchlm.model.gpt import GPT
from scratchlm.model.kv_cache import KVCache


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

    `on_token(sample_index, token_id)` streams tokens as they come (stopped samples are quiet).
    """
    if num_samples < 1:
        raise UserError(f"num_samples (--num-samples) is {num_samples}; it must be at least 1.")
    outputs: list[list[int]] = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for step_tokens in generate_tokens(model, [list(prompt)] * num_samples, max_new_tokens, sampling, seed, stop_ids, vocab_size=vocab_size):
        for i, token in enumerate(step_tokens.tolist()):
            if done[i]:
                continue
            if token in stop_ids:
                done[i] = True
                continue
            outputs[i].append(token)
            if on_token:
                on_token(i, token)
    return outputs
