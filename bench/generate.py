"""Generation speed on the CPU: scratchlm's engine against `transformers`' `generate` on the same
weights, in the same run (ratios, because these machines are noisy).

Targets: greedy decode with the KV cache ≥ 1.5× transformers' tokens/s at batch 1; batch 8
(mixed prompt lengths) ≥ 4× the tokens/s of batch 1.

The model is GPT-2 small's shape by default (12 layers, 12 heads, 768 wide, vocabulary 50257,
context 1024), random weights, built once as a scratchlm GPT and copied into
`GPT2LMHeadModel` through `scratchlm.convert.hf` (the converter `convert to-hf` uses), so both
compute the same function; the greedy tokens of both are compared as a check. Our model is then
laid out for decoding as `generate`, `chat` and `serve` do (`generate/layout.py`: each weight
shape timed row- and column-major, the faster kept).

Contenders, alternated round by round, each keeping its best round (`--rounds`):

- cache b1     one prompt of `--prompt` tokens, `--new` new tokens, greedy, KV cache: our
               `Engine` (a request, `step` until idle) against `model.generate(do_sample=False,
               use_cache=True)` with `min_new_tokens` = `max_new_tokens`, so neither stops early.
- cache b8     eight prompts of mixed lengths (from `--prompt` / 4 to `--prompt` tokens) in one
               batch: our engine (left padding kept per row in the cache) against `generate`
               with left padding and an attention mask; tokens/s counts 8 × `--new`.
- no cache b1  the same as cache b1 with the whole sequence recomputed at every step
               (`generate_tokens(use_cache=False)`, `generate(use_cache=False)`), `--new-nocache`
               new tokens since its cost grows with the square of the length.
- first token  time to the first new token of a `--ttft-prompt`-token prompt: our engine's first
               `step` (prefill + sampling) against `generate(max_new_tokens=1)`.
- server       `--server`: `scratchlm serve` started as a user starts it (a subprocess on
               127.0.0.1, the same weights saved as a checkpoint with GPT-2's tokenizer from
               ../shared/data/gpt2, the same precision) and 8 concurrent clients (threads, the
               `openai` client, streaming completions of cache b8's prompts as token ids,
               temperature 0); tokens/s is every completion token the server reports over the
               wall time from the first request to the last [DONE], against transformers'
               batch-8 `generate` of the same prompts.

Tokens/s is new tokens over the wall time of the whole call (prefill included), for both.

    python bench/generate.py [--layers 12 --heads 12 --width 768 --vocab 50257 --context 1024]
                             [--prompt 64] [--new 64] [--new-nocache 16] [--ttft-prompt 512]
                             [--rounds 3] [--threads N] [--dtype float32|bfloat16]
                             [--ours-dtype float32|bfloat16] [--server]

Precision: `--dtype` sets both models' weights (fp32 by default, the same function for both).
`--dtype float32 --ours-dtype bfloat16` compares what each tool runs by default on a CPU with
native bf16 (scratchlm's `--dtype auto` picks bf16 there; transformers loads fp32).
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from scratchlm.console import set_quiet
from scratchlm.convert.hf import to_hf_state
from scratchlm.generate.engine import Engine, Request, generate_tokens
from scratchlm.generate.layout import lay_out_for_decoding
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.runtime import cpu_model

GREEDY = SamplingConfig(temperature=0.0)


def race(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Best seconds of each contender over `rounds`, run alternately so all see the same machine."""
    best = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, function in contenders.items():
            best[name] = min(best[name], function())
    return best


def timed(function: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        function()
        return time.perf_counter() - start

    return run


def build(args: argparse.Namespace) -> tuple[GPT, torch.nn.Module]:
    """A random GPT-2-shaped scratchlm model and the transformers model with the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPTConfig(vocab_size=args.vocab, block_size=args.context, n_layer=args.layers, n_head=args.heads, n_embd=args.width)
    torch.manual_seed(0)
    ours = GPT(config).eval()
    hf_config = GPT2Config(
        vocab_size=args.vocab, n_positions=args.context, n_embd=args.width, n_layer=args.layers, n_head=args.heads,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=None, eos_token_id=None,
    )
    theirs = GPT2LMHeadModel(hf_config).eval()
    missing, unexpected = theirs.load_state_dict(to_hf_state(ours.state_dict(), config), strict=False)
    if unexpected or [m for m in missing if not m.endswith((".attn.bias", ".attn.masked_bias"))]:
        raise SystemExit(f"the weights did not map: missing {missing}, unexpected {unexpected}")
    return ours, theirs


def prompts(batch: int, longest: int, vocab: int) -> list[list[int]]:
    """`batch` prompts from longest/4 to `longest` tokens (one prompt of `longest` when batch is 1)."""
    generator = torch.Generator().manual_seed(1)
    lengths = [longest] if batch == 1 else [max(1, longest // 4 + (longest - longest // 4) * i // (batch - 1)) for i in range(batch)]
    return [torch.randint(vocab, (n,), generator=generator).tolist() for n in lengths]


def ours_generate(model: GPT, batch: list[list[int]], new: int) -> list[list[int]]:
    engine = Engine(model, max_batch_size=len(batch))
    return [g.tokens for g in engine.run([Request(p, new, GREEDY) for p in batch])]


def hf_generate(model: torch.nn.Module, batch: list[list[int]], new: int, use_cache: bool = True) -> list[list[int]]:
    longest = max(len(p) for p in batch)
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
            use_cache=use_cache, pad_token_id=0, eos_token_id=None,
        )
    return out[:, longest:].tolist()


def ours_first_token(model: GPT, prompt: list[int]) -> None:
    engine = Engine(model, max_batch_size=1)
    engine.submit(Request(prompt, 1, GREEDY))
    engine.step()


@contextmanager
def served(model: GPT, dtype: torch.dtype) -> Iterator[str]:
    """`scratchlm serve` of `model` in a subprocess; its base URL."""
    from scratchlm.tokenizer.formats import load_gpt2_files
    from scratchlm.train.checkpoint import write_checkpoint_dir

    vocabulary = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpt2"
    if not (vocabulary / "encoder.json").is_file():
        raise SystemExit(f"--server needs GPT-2's vocabulary files in {vocabulary}")
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = Path(directory) / "gpt2-random"
        state = {name: tensor.float().contiguous() for name, tensor in model.state_dict().items()}
        write_checkpoint_dir(checkpoint, state, model.config, load_gpt2_files(vocabulary / "encoder.json", vocabulary / "vocab.bpe"), {})
        dtype_name = str(dtype).removeprefix("torch.")
        process = subprocess.Popen(
            [sys.executable, "-m", "scratchlm", "serve", str(checkpoint), "--port", "0", "--dtype", dtype_name, "--max-batch-size", "8"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if "API http" in line:
                    yield line.split("API ")[1].split()[0].rstrip(";")
                    break
            else:
                raise SystemExit("scratchlm serve did not start")
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(30)


def server_seconds(url: str, batch: list[list[int]], new: int) -> tuple[float, int]:
    """Wall seconds for one streaming client per prompt, all at once, and the tokens they got."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    tokens = [0] * len(batch)

    def ask(i: int) -> None:
        stream = client.completions.create(model="gpt2-random", prompt=batch[i], max_tokens=new, temperature=0, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.usage is not None:
                tokens[i] = chunk.usage.completion_tokens

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(batch))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, sum(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (the longest of batch 8)")
    parser.add_argument("--new", type=int, default=64, help="new tokens per sequence with the cache")
    parser.add_argument("--new-nocache", type=int, default=16, help="new tokens per sequence without the cache")
    parser.add_argument("--ttft-prompt", type=int, default=512, help="prompt tokens for the time to first token")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights and compute of both models")
    parser.add_argument("--ours-dtype", choices=["float32", "bfloat16"], help="ours only (default: --dtype): each tool at its own default precision")
    parser.add_argument("--server", action="store_true", help="also measure `scratchlm serve` with 8 concurrent streaming clients")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    set_quiet(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, theirs = build(args)
    theirs_dtype = getattr(torch, args.dtype)
    ours_dtype = getattr(torch, args.ours_dtype or args.dtype)
    ours.to(ours_dtype)
    theirs.to(theirs_dtype)
    relaid = lay_out_for_decoding(ours)  # as generate, chat and serve load a model
    one, eight = prompts(1, args.prompt, args.vocab), prompts(8, args.prompt, args.vocab)
    long_prompt = prompts(1, args.ttft_prompt, args.vocab)[0]

    checks = {
        "b1": ours_generate(ours, one, args.new) == hf_generate(theirs, one, args.new),
        "b8": ours_generate(ours, eight, args.new) == hf_generate(theirs, eight, args.new),
    } if ours_dtype == theirs_dtype else "not compared: the precisions differ"
    contenders = {
        "ours cache b1": timed(lambda: ours_generate(ours, one, args.new)),
        "hf cache b1": timed(lambda: hf_generate(theirs, one, args.new)),
        "ours cache b8": timed(lambda: ours_generate(ours, eight, args.new)),
        "hf cache b8": timed(lambda: hf_generate(theirs, eight, args.new)),
        "ours no cache b1": timed(lambda: list(generate_tokens(ours, one, args.new_nocache, GREEDY, use_cache=False))),
        "hf no cache b1": timed(lambda: hf_generate(theirs, one, args.new_nocache, use_cache=False)),
        "ours first token": timed(lambda: ours_first_token(ours, long_prompt)),
        "hf first token": timed(lambda: hf_generate(theirs, [long_prompt], 1)),
    }
    server_tokens = 0
    with served(ours, ours_dtype) if args.server else nullcontext() as url:
        if url is not None:
            server_seconds(url, eight, 2)  # warm-up: the first requests pay for lazy imports

            def through_server() -> float:
                nonlocal server_tokens
                seconds, server_tokens = server_seconds(url, eight, args.new)
                return seconds

            contenders["ours server 8 clients"] = through_server
        best = race(contenders, args.rounds)
    rate = {
        "cache b1": (args.new / best["ours cache b1"], args.new / best["hf cache b1"]),
        "cache b8": (8 * args.new / best["ours cache b8"], 8 * args.new / best["hf cache b8"]),
        "no cache b1": (args.new_nocache / best["ours no cache b1"], args.new_nocache / best["hf no cache b1"]),
    }
    if args.server:
        rate["server 8 clients"] = (server_tokens / best["ours server 8 clients"], 8 * args.new / best["hf cache b8"])
    import transformers

    result = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "dtype": {"ours": str(ours_dtype).removeprefix("torch."), "transformers": str(theirs_dtype).removeprefix("torch.")},
        "column-major weights (ours)": [list(shape) for shape in relaid],
        "shape": {k: getattr(args, k) for k in ("layers", "heads", "width", "vocab", "context", "prompt", "new", "new_nocache", "ttft_prompt", "rounds")},
        "same greedy tokens as transformers": checks,
        "tokens_per_s": {name: {"ours": round(o, 1), "transformers": round(t, 1), "ratio": round(o / t, 2)} for name, (o, t) in rate.items()},
        "batch 8 over batch 1 (ours)": round(rate["cache b8"][0] / rate["cache b1"][0], 2),
        "first token ms": {"ours": round(1000 * best["ours first token"], 1), "transformers": round(1000 * best["hf first token"], 1), "ratio (theirs/ours)": round(best["hf first token"] / best["ours first token"], 2)},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"CPU: {result['cpu']}, {result['threads']} threads; torch {result['torch']}, transformers {result['transformers']}")
    print(f"dtype: {result['dtype']}; shape: {result['shape']}; column-major weights (ours): {relaid}")
    print(f"same greedy tokens as transformers: {checks}")
    print(f"{'':<18}{'ours tok/s':>12}{'transformers':>14}{'ratio':>8}")
    for name, row in result["tokens_per_s"].items():
        print(f"{name:<18}{row['ours']:>12}{row['transformers']:>14}{row['ratio']:>8}")
    print(f"batch 8 over batch 1 (ours): {result['batch 8 over batch 1 (ours)']}×")
    ft = result["first token ms"]
    print(f"time to first token ({args.ttft_prompt}-token prompt): ours {ft['ours']} ms, transformers {ft['transformers']} ms ({ft['ratio (theirs/ours)']}× faster)")


if __name__ == "__main__":
    main()
