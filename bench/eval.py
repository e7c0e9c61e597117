"""Evaluation throughput (tokens scored per second) against training's forward + backward, in the
same run, on the same model and batch shape.

- eval: `scratchlm.eval.text.evaluate_texts` end to end on synthetic English-like documents
  (encoding included), each a few contexts long, windows batched `--batch` at a time, with
  `--stride` (default: the context, disjoint windows; a stride s < context costs about
  context / s times as much per scored token).
- train: what `Trainer.train_step` does per micro-batch without the optimizer: the model in
  training mode, `model(x, y)` (the chunked head + cross-entropy) and `loss.backward()`, then
  zero_grad(set_to_none), on (batch, context) token batches.

Both in `--dtype` (float32 by default, as `scratchlm eval` loads; bfloat16 runs both under bf16
autocast), alternated round by round; each keeps its best round (the least disturbed by other
load). Target: eval ≥ 1.5× training tokens/s. GPT-2 small's shape by default (12 layers, 12
heads, 768 wide, context 1024, vocabulary 50304); shrink it with the options.

    python bench/eval.py [--layers 12] [--heads 12] [--width 768] [--context 1024] [--batch 8]
                         [--vocab 50304] [--stride N] [--rounds 3] [--steps 3] [--threads N]
                         [--dtype float32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch

from scratchlm.console import set_quiet
from scratchlm.eval.text import evaluate_texts
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.runtime import autocast, cpu_model, resolve_dtype
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

WORDS = (
    "the of and to in is was he that it for on with as his they be at one have this from or had by word but what some we can out "
    "other were all there when up use your how said an each she which do their time if will way about many then them write would "
    "like so these her long make thing see him two has look more day could go come did number sound no most people my over know"
).split()


def synthetic_text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    return " ".join(w.capitalize() + "." if rng.random() < 0.05 else w for w in words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="training steps per round; eval scores the same number of full batches")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    set_quiet(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    dtype = resolve_dtype(args.dtype, device, "--dtype")
    amp = autocast(device, dtype)

    rng = random.Random(0)
    tokenizer = train_from_texts([synthetic_text(rng, 20_000)], TokenizerTrainConfig(vocab_size=512, workers=1))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=args.vocab, block_size=args.context, n_layer=args.layers, n_head=args.heads, n_embd=args.width))

    # Documents of ~2.5 contexts each (full windows and a shorter last one), enough for `steps` batches.
    words_per_doc = int(2.5 * args.context / 1.3)
    texts = [synthetic_text(rng, words_per_doc) for _ in range(max(1, args.steps * args.batch // 2))]
    x = torch.randint(0, tokenizer.vocab_size, (args.batch, args.context + 1))
    x, y = x[:, :-1], x[:, 1:]

    def train_round() -> float:
        model.train()
        started = time.perf_counter()
        for _ in range(args.steps):
            with amp:
                loss = model(x, y)[1]
            loss.backward()
            model.zero_grad(set_to_none=True)
        return args.steps * x.numel() / (time.perf_counter() - started)

    def eval_round() -> tuple[float, dict]:
        started = time.perf_counter()
        result = evaluate_texts(model, tokenizer, texts, stride=args.stride, batch_size=args.batch, autocast=amp)
        return result["tokens"] / (time.perf_counter() - started), result

    train_round()  # warm up both (allocator, kernels)
    eval_round()
    train_best = eval_best = 0.0
    for _ in range(args.rounds):
        train_best = max(train_best, train_round())
        rate, result = eval_round()
        eval_best = max(eval_best, rate)

    shape = f"{args.layers} layers, {args.heads} heads, {args.width} wide, context {args.context}, batch {args.batch}, vocab {args.vocab}"
    figures = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "shape": shape,
        "dtype": str(dtype).removeprefix("torch."),
        "stride": result["stride"],
        "eval_tokens_per_doc_round": result["tokens"],
        "eval_windows_per_round": result["windows"],
        "train_tokens_per_s": train_best,
        "eval_tokens_per_s": eval_best,
        "ratio": eval_best / train_best,
    }
    print(f"CPU: {figures['cpu']} ({figures['threads']} threads), {figures['dtype']}")
    print(f"shape: {shape}; eval stride {result['stride']}, {result['tokens']:,} tokens in {result['windows']} windows per round")
    print(f"train (forward + backward): {train_best:>10,.0f} tokens/s")
    print(f"eval  (evaluate_texts):     {eval_best:>10,.0f} tokens/s")
    print(f"eval / train: {figures['ratio']:.2f}× (target ≥ 1.5×)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
