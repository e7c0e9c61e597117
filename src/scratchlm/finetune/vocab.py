"""New special tokens for fine-tuning (a chat template's role markers): the tokenizer gains ids
above every existing one, and the model's embedding (and an untied head) gains rows for them.

New rows start at the mean of the rows the tokenizer already used: a token the model has never
seen then looks like an average token rather than a random direction (Hewitt 2021), so the
first steps of fine-tuning are not spent undoing a large, arbitrary logit. Padding rows the
embedding already had (the vocabulary rounded up to a multiple of 64) are reused before growing.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import Tokenizer


def add_special_tokens(tokenizer: Tokenizer, tokens: tuple[str, ...]) -> tuple[Tokenizer, list[str]]:
    """The tokenizer with `tokens` as special tokens (those it lacks get the next ids); the added ones."""
    added = [t for t in tokens if t not in tokenizer.special_tokens]
    if not added:
        return tokenizer, []
    special = dict(tokenizer.special_tokens)
    for token in added:
        special[token] = tokenizer.vocab_size + len(special) - len(tokenizer.special_tokens)
    return Tokenizer(tokenizer.ranks, tokenizer.pattern, special, tokenizer.name), added


def fit_vocabulary(model: GPT, old_vocab_size: int, new_vocab_size: int) -> None:
    """Make the rows of ids old_vocab_size..new_vocab_size-1 the mean of the rows below; grow the
    embedding (rounded up to a multiple of 64) when it has too few."""
    rows = model.transformer.wte.num_embeddings
    if new_vocab_size > rows:
        rows = 64 * math.ceil(new_vocab_size / 64)
        _grow(model, rows)
    with torch.no_grad():
        for weight in {id(w): w for w in (model.transformer.wte.weight, model.lm_head.weight)}.values():
            weight[old_vocab_size:new_vocab_size] = weight[:old_vocab_size].mean(dim=0)


def _grow(model: GPT, rows: int) -> None:
    old = model.transformer.wte
    embedding = nn.Embedding(rows, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        embedding.weight.zero_()
        embedding.weight[: old.num_embeddings] = old.weight
    model.transformer.wte = embedding
    if model.config.tie_embeddings:
        model.lm_head = nn.Linear(old.embedding_dim, rows, bias=False, device=old.weight.device, dtype=old.weight.dtype)
        model.lm_head.weight = embedding.weight
    else:
        head = nn.Linear(old.embedding_dim, rows, bias=False, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            head.weight.zero_()
            head.weight[: old.num_embeddings] = model.lm_head.weight
        model.lm_head = head
    model.config = dataclasses.replace(model.config, vocab_size=rows)
