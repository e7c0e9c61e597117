"""Preference pairs derived honestly from instruction data: for each record, the chosen answer is
the reference output and the rejected one is what an instruction-tuned checkpoint answers itself
(greedy), so DPO teaches the model to prefer the references over its own habits.

    python examples/dpo_pairs.py runs/sft ../shared/data/instruction-data.json runs/pairs.jsonl --limit 300
    scratchlm finetune dpo --set data.train=runs/pairs.jsonl --set train.init_from=runs/sft --set train.out_dir=runs/dpo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scratchlm.checkpoints import load_model
from scratchlm.finetune.instruct_data import read_records
from scratchlm.generate.chat import ChatFormat
from scratchlm.generate.engine import Engine, Request
from scratchlm.generate.sampling import SamplingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="an instruction-tuned checkpoint (its chat template lays out the prompts)")
    parser.add_argument("records", help="Alpaca or chat records (.json or .jsonl)")
    parser.add_argument("out", help="the pairs, as JSON lines")
    parser.add_argument("--limit", type=int, default=300, help="records to use (the first ones)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    model, tokenizer, meta = load_model(args.checkpoint)
    chat = ChatFormat(tokenizer, meta.get("chat_template"))
    conversations = read_records(args.records)[: args.limit]
    requests = [Request(chat.encode(c[:-1]), args.max_new_tokens, SamplingConfig(temperature=0.0), stop_ids=chat.stop_ids, overflow="truncate") for c in conversations]
    answers = [g.text.strip() for g in Engine(model, tokenizer, max_batch_size=16).run(requests)]
    kept = 0
    with Path(args.out).open("w") as f:
        for conversation, answer in zip(conversations, answers):
            reference = conversation[-1].content
            if answer == reference.strip():
                continue  # the model already gives the reference: no preference to learn
            prompt = [{"role": m.role, "content": m.content} for m in conversation[:-1]]
            f.write(json.dumps({"prompt": prompt, "chosen": reference, "rejected": answer}, ensure_ascii=False) + "\n")
            kept += 1
    print(f"{args.out}: {kept} pairs from {len(conversations)} records")


if __name__ == "__main__":
    main()
