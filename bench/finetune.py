"""Full fine-tuning against LoRA at equal batch: step time, peak memory, trainable parameters.

Both contenders take the same model and the same batches and run the same training step as
`scratchlm finetune` (forward, loss, backward, gradient clipping, fused AdamW over the trainable
parameters; `make_optimizer`), in fp32:

- full   every weight trains (AdamW keeps two moments per parameter, and every weight has a
         gradient)
- lora   LoRA (`--rank`, default 8) on attention's q, k, v and output projections, the defaults
         of `[lora]`; only the adapters train

Step time: the contenders alternate round by round (`--rounds`), `--steps` timed steps after
`--warmup`, each keeping its best round. Peak memory: each contender runs `--warmup` + `--steps`
steps alone in a fresh process, and the peak resident set size (VmHWM) the steps add to what
the process held once the model was built is reported, so the figure is what training adds.

The model is GPT-2 small's shape by default (12 layers, 768 wide, 12 heads, vocabulary 50,257),
random weights; micro-batches of `--batch` sequences of `--length` tokens, random ids.

    python bench/finetune.py [--layers 12 --width 768 --heads 12 --vocab 50257] [--batch 4]
                             [--length 256] [--rank 8] [--rounds 3] [--steps 5] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.model.lora import LoraConfig, apply_lora, lora_parameter_count
from scratchlm.runtime import cpu_model
from scratchlm.train.optim import OptimConfig, make_optimizer


def build(args: argparse.Namespace, contender: str) -> tuple[GPT, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=args.vocab, block_size=args.length, n_layer=args.layers, n_head=args.heads, n_embd=args.width))
    if contender == "lora":
        apply_lora(model, LoraConfig(rank=args.rank))
    return model.train(), make_optimizer(model, OptimConfig(lr=1e-4), "cpu")


def batches(args: argparse.Namespace, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(args.vocab, (args.batch, args.length), generator=generator), torch.randint(args.vocab, (args.batch, args.length), generator=generator)) for _ in range(n)]


def step(model: GPT, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def memory_probe(args: argparse.Namespace) -> None:
    """In a fresh process: build the contender, then run its steps; print the peak RSS before and after."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # a forked child starts with its parent's high-water mark
    model, optimizer = build(args, args.memory_probe)
    data = batches(args, args.warmup + args.steps)
    before = peak_rss_kb()
    for batch in data:
        step(model, optimizer, batch)
    print(json.dumps({"before_kb": before, "after_kb": peak_rss_kb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--memory-probe", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args)
        return
    shape = ["--layers", str(args.layers), "--width", str(args.width), "--heads", str(args.heads), "--vocab", str(args.vocab), "--batch", str(args.batch), "--length", str(args.length), "--rank", str(args.rank), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    memory = {}
    for contender in ("full", "lora"):
        out = subprocess.run([sys.executable, __file__, "--memory-probe", contender, *shape], capture_output=True, text=True, check=True).stdout
        figures = json.loads(out.strip().splitlines()[-1])
        memory[contender] = (figures["after_kb"] - figures["before_kb"]) / 1024

    runs = {name: build(args, name) for name in ("full", "lora")}
    data = batches(args, args.warmup + args.steps)
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, (model, optimizer) in runs.items():
            for batch in data[: args.warmup]:
                step(model, optimizer, batch)
            started = time.perf_counter()
            for batch in data[args.warmup :]:
                step(model, optimizer, batch)
            best[name] = min(best[name], (time.perf_counter() - started) / args.steps)
    total = runs["full"][0].num_params()
    trainable = {"full": total, "lora": lora_parameter_count(runs["lora"][0])}
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"model: {args.layers} layers, {args.width} wide, vocabulary {args.vocab}, {total / 1e6:.1f} M parameters; micro-batch {args.batch} × {args.length} tokens, fp32; LoRA rank {args.rank} on attention q, k, v, out")
    print(f"{'':<6}{'trainable':>18}{'step':>12}{'peak memory added':>20}")
    for name in runs:
        print(f"{name:<6}{trainable[name]:>12,} ({100 * trainable[name] / total:.2f} %){1000 * best[name]:>9.0f} ms{memory[name]:>17.0f} MB")
    print(f"LoRA / full: step {best['lora'] / best['full']:.2f}×, peak memory {memory['lora'] / memory['full']:.2f}×")


if __name__ == "__main__":
    main()
