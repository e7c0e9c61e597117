"""EleutherAI's lm-evaluation-harness on scratchlm checkpoints (extra `eval`: `lm-eval`).

`ScratchLM` is a registered lm-eval `LM` ("scratchlm") whose three request types run on our own
code, so the harness's numbers and `scratchlm eval`'s come from one implementation:

- loglikelihood: `eval.tasks.score_continuations` (batched, the choices of an item together);
- loglikelihood_rolling: `eval.text.evaluate_tokens` (every token once, context-sized windows,
  after <|endoftext|>), as a sum of log-probabilities per string;
- generate_until: the inference engine (greedy unless the task asks for sampling), stopping at
  the task's `until` strings and at any special token.

lm-eval discovers models only among those imported, so its command line is reached through this
module, which registers the model first and then hands the arguments to lm-eval unchanged:

    python -m scratchlm.eval.harness --model scratchlm --model_args checkpoint=runs/sft \\
        --tasks hellaswag --batch_size 16

(The Python API works directly: `lm_eval.simple_evaluate(model=ScratchLM("runs/sft"), ...)`.)
Nothing here downloads: tasks whose data is not cached need network access, which lm-eval itself
fetches; local tasks (`--include_path DIR` with a YAML task over a local JSONL file) work offline.
"""

from __future__ import annotations

import sys
from typing import Any

from scratchlm.errors import UserError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # the `eval` extra is not installed: `ScratchLM` says so when it is used
    LM, register_model = object, None  # type: ignore[assignment,misc]


def _require_lm_eval() -> None:
    if register_model is None:
        raise UserError("The lm-evaluation-harness adapter needs lm-eval; install it with: pip install 'scratchlm[eval]'")


class ScratchLM(LM):  # type: ignore[misc,valid-type]
    """A scratchlm checkpoint as an lm-eval model. `model_args`: checkpoint (required), device,
    dtype (float32, bfloat16), batch_size, max_gen_toks."""

    def __init__(self, checkpoint: str = "", device: str = "auto", dtype: str = "float32", batch_size: int | str = 16, max_gen_toks: int = 256, **_: Any) -> None:
        _require_lm_eval()
        super().__init__()
        if not checkpoint:
            raise UserError("The scratchlm model needs a checkpoint: --model_args checkpoint=DIR.")
        from scratchlm.checkpoints import load_model
        from scratchlm.runtime import autocast, resolve_device, resolve_dtype

        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm-eval asks for cuda:0 by default, whatever the machine has
        resolved = resolve_device(device, "--model_args device")
        precision = resolve_dtype(dtype, resolved, "--model_args dtype")
        self.model, self.tokenizer, _meta = load_model(checkpoint, resolved, precision)
        self.autocast = autocast(resolved, precision)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16  # "auto" → our default
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from scratchlm.eval.tasks import score_continuations

        return score_continuations(self.model, self.tokenizer, [tuple(r.args) for r in requests], self.batch_size, self.autocast)  # type: ignore[misc]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from scratchlm.eval.text import evaluate_tokens

        totals = []
        for request in requests:
            ids = self.tokenizer.encode_ordinary(request.args[0])
            if not ids:
                totals.append(0.0)
                continue
            figures = evaluate_tokens(self.model, self.tokenizer, [ids], batch_size=self.batch_size, autocast=self.autocast)
            totals.append(-figures["loss"] * figures["tokens"])
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from scratchlm.generate.engine import Engine, Request
        from scratchlm.generate.sampling import SamplingConfig

        engine = Engine(self.model, self.tokenizer, max_batch_size=self.batch_size)
        prepared = []
        for request in requests:
            context, options = request.args
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(options.get("temperature", 0.0)) if options.get("do_sample") else 0.0
            ids = self.tokenizer.encode_ordinary(context) or ([self.tokenizer.eot_id] if self.tokenizer.eot_id is not None else [0])
            stops = tuple(sorted(self.tokenizer.special_tokens.values()))
            prepared.append(Request(ids, int(options.get("max_gen_toks", self.max_gen_toks)), SamplingConfig(temperature=temperature), seed=0, stop_ids=stops, stop_strings=tuple(until), overflow="truncate"))
        with self.autocast:
            return [g.text for g in engine.run(prepared)]


if register_model is not None:
    register_model("scratchlm")(ScratchLM)


def main() -> None:
    """lm-eval's command line, with the scratchlm model registered."""
    _require_lm_eval()
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
