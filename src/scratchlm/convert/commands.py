"""`scratchlm convert`: Hugging Face model folders ⇄ scratchlm checkpoints (see `scratchlm.convert.hf`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

convert_app = typer.Typer(
    help=(
        "Convert between Hugging Face model folders and scratchlm checkpoints: GPT-2, Llama and Qwen3, with the same logits and token ids.\n\n"
        "Examples:\n\n"
        "  scratchlm convert from-hf ~/models/gpt2 runs/gpt2\n\n"
        "  scratchlm convert to-hf runs/speedrun/train runs/speedrun-hf"
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@convert_app.command("from-hf")
def from_hf_command(
    directory: Annotated[Path, typer.Argument(help="A local Hugging Face model folder: config.json, model.safetensors (or shards with their index, or pytorch_model.bin), and tokenizer.json or GPT-2's vocab.json + merges.txt.")],
    out: Annotated[Path, typer.Argument(help="The checkpoint directory to write (new or empty).")],
    overwrite: Annotated[bool, typer.Option(help="Replace a checkpoint already in OUT (a directory holding anything else is never replaced).")] = False,
) -> None:
    """Convert a local Hugging Face GPT2LMHeadModel, LlamaForCausalLM or Qwen3ForCausalLM folder into a scratchlm checkpoint directory, which `generate` and `train.init_from` take.

    Nothing is downloaded: save the model with save_pretrained, or copy its folder from the hub cache, first. Weights become fp32; the tokenizer and any chat template travel with them. A setting scratchlm cannot reproduce exactly (RoPE scaling, a sliding window, biases on Llama, a head size other than hidden/heads, ...) is refused, naming it.

    Examples:

      scratchlm convert from-hf ~/models/gpt2 runs/gpt2    # then: scratchlm generate runs/gpt2

      scratchlm convert from-hf ~/models/qwen3-tiny runs/qwen3 --overwrite
    """
    from scratchlm.convert.hf import from_hf

    from_hf(directory, out, overwrite)


@convert_app.command("to-hf")
def to_hf_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory, or a run directory (its newest readable checkpoint).")],
    out: Annotated[Path, typer.Argument(help="The Hugging Face model folder to write (new or empty).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier conversion in OUT (a directory holding anything else is never replaced).")] = False,
    dtype: Annotated[str, typer.Option(help="Weight precision in OUT: float32, bfloat16 or float16.")] = "float32",
) -> None:
    """Write a checkpoint as a Hugging Face model folder that AutoModelForCausalLM and AutoTokenizer load: GPT-2 for learned positions, Llama for rotary ones, Qwen3 with QK-norm.

    The folder holds config.json, model.safetensors, generation_config.json, tokenizer.json, tokenizer_config.json (with the checkpoint's chat template, if any) and special_tokens_map.json. Writing it does not need transformers. A model that no Hugging Face architecture expresses (learned positions with RMSNorm, biases with SwiGLU, ...) is refused, naming the settings.

    Examples:

      scratchlm convert to-hf runs/speedrun/train runs/speedrun-hf

      scratchlm convert to-hf runs/speedrun/train/checkpoints/step_0002000 runs/hf --dtype bfloat16 --overwrite
    """
    from scratchlm.convert.hf import to_hf

    to_hf(checkpoint, out, overwrite, dtype)
