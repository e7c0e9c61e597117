"""The `scratchlm` command tree. Each command parses its arguments, then calls one stage function."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from scratchlm import __version__
from scratchlm.config import (
    deep_update,
    describe,
    from_dict,
    load_config,
    merge_overrides,
    read_toml,
    resolve_config_file,
    settings_help,
)
from scratchlm.console import console, info, set_quiet
from scratchlm.convert.commands import convert_app
from scratchlm.data.prepare import PrepareConfig
from scratchlm.data.quality import QualityTrainConfig
from scratchlm.errors import UserError
from scratchlm.finetune.settings import ClassifyConfig, DPOConfig, InstructConfig
from scratchlm.generate.layout import INFERENCE_DTYPE_HELP
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.report_command import report_command
from scratchlm.serve.command import serve_command
from scratchlm.speedrun import SpeedrunConfig
from scratchlm.tokenizer.train import TokenizerTrainConfig
from scratchlm.train.settings import RunConfig

# -h as well as --help; each command's context inherits it from its group's.
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    help=(
        "scratchlm: build a GPT-style language model from scratch, end to end.\n\n"
        "Examples:\n\n"
        "  scratchlm speedrun    # corpus → tokenizer → pretraining → samples → runs/speedrun/report.md\n\n"
        '  scratchlm generate runs/speedrun/train --prompt "ROMEO."'
    ),
    no_args_is_help=True,
    context_settings=HELP_OPTIONS,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(
    help=(
        "Corpora and documents: fetch, prepare, inspect.\n\n"
        "Examples:\n\n"
        "  scratchlm data fetch shakespeare\n\n"
        "  scratchlm data prepare --input raw/ --output runs/docs"
    ),
    no_args_is_help=True,
    context_settings=HELP_OPTIONS,
)
tokenizer_app = typer.Typer(
    help=(
        "Byte-level BPE tokenizers: train, encode, decode, inspect.\n\n"
        "Examples:\n\n"
        "  scratchlm tokenizer train --corpus shakespeare --vocab-size 8192 --output runs/tok\n\n"
        '  scratchlm tokenizer encode runs/tok "To be, or not to be" --show'
    ),
    no_args_is_help=True,
    context_settings=HELP_OPTIONS,
)
app.add_typer(data_app, name="data")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(convert_app, name="convert")
finetune_app = typer.Typer(
    help=(
        "Fine-tune a checkpoint (your own, or GPT-2 from `convert from-hf`) on the one training engine, with or without LoRA.\n\n"
        "Examples:\n\n"
        "  scratchlm finetune instruct my_sft.toml --set train.init_from=runs/speedrun/train"
    ),
    no_args_is_help=True,
    context_settings=HELP_OPTIONS,
)
app.add_typer(finetune_app, name="finetune")


def _version(value: bool) -> None:
    if value:
        print(f"scratchlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines (errors still print).")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
    local_rank: Annotated[Optional[int], typer.Option("--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher; the LOCAL_RANK variable it also sets is what is used.")] = None,
) -> None:
    set_quiet(quiet)


# ---- settings from dataclasses ----------------------------------------------------------------


def _option_type(annotation: Any) -> Any:
    """The Optional[...] type typer should parse a config field as (None = not given)."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return Optional[list[typing.get_args(annotation)[0]]]
    if origin is typing.Literal:
        return Optional[str]
    return Optional[annotation]


def with_settings(cls: type, file_and_set: bool = True) -> typing.Callable:
    """Give a command one `--flag` per field of `cls`, plus `--config FILE` and `--set KEY=VALUE`
    (unless `file_and_set` is false, for a command whose `--set` means something else).

    Precedence: defaults < TOML file < flags < `--set`. The command receives `settings`, a
    validated `cls` instance. The flags' help text is each field's docstring.
    """

    def decorate(func: typing.Callable) -> typing.Callable:
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        own_hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints[p.name])
            for p in inspect.signature(func).parameters.values()
            if p.name != "settings"
        ]
        extra = []
        for f, (_, _, default, doc) in zip(fields, describe(cls)):
            flag = f.name.replace("_", "-")
            # Booleans get a --x/--no-x pair, so a setting that defaults to true can be turned off.
            names = f"--{flag}/--no-{flag}" if hints[f.name] is bool else f"--{flag}"
            option = typer.Option(names, help=f"{doc} [dim]\\[default: {escape(default)}][/dim]", rich_help_panel="Settings", show_default=False)
            extra.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[_option_type(hints[f.name]), option]))
        if file_and_set:
            extra.append(inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[Path], typer.Option("--config", help="A TOML file of settings (flags and --set override it).", rich_help_panel="Settings")]))
            extra.append(inspect.Parameter("overrides", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, KEY=VALUE (repeatable).", rich_help_panel="Settings")]))

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            config_file = kwargs.pop("config_file") if file_and_set else None
            overrides = (kwargs.pop("overrides") or []) if file_and_set else []
            flags = {}
            for f in fields:
                value = kwargs.pop(f.name)
                if value is not None:
                    flags[f.name] = value
            data = read_toml(config_file) if config_file else {}
            settings = from_dict(cls, merge_overrides(deep_update(data, flags), overrides))
            return func(settings=settings, **kwargs)

        parameters = own + extra
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        # typer reads types from __annotations__, which functools.wraps copied from `func`.
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


# ---- data -----------------------------------------------------------------------------------


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="The corpus to fetch.")] = "shakespeare",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Cache directory [default: $SCRATCHLM_CACHE, else $XDG_CACHE_HOME/scratchlm, else ~/.cache/scratchlm].")] = None,
) -> None:
    """Fetch a known corpus into the cache (verified by checksum; reused when present).

    Examples:

      scratchlm data fetch shakespeare    # prints the cached tarball's path
    """
    from scratchlm.data.corpus import fetch

    print(fetch(name, cache_dir))


@data_app.command("prepare", epilog=settings_help(PrepareConfig))
def data_prepare(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the documents (and shards/ with --tokenizer).")],
    input: Annotated[Optional[list[Path]], typer.Option("--input", "-i", help="Text files, directories, JSONL(.zst/.gz) or Parquet files (repeatable).")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="Also read a known corpus by name (e.g. shakespeare), fetched if missing.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="A TOML file of pipeline settings (see the list below).")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, KEY=VALUE with a dotted key (repeatable), e.g. --set langid.min_score=0.8.")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="Also tokenize the kept documents into OUTPUT/shards with this tokenizer.")] = None,
    keep_removed: Annotated[bool, typer.Option(help="Also write the removed documents with their reasons (removed_*.jsonl.zst).")] = False,
    processes: Annotated[Optional[int], typer.Option(help="Worker processes (same as --set executor.processes=N); 0 = one per CPU core.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the documents an earlier `data prepare` wrote to --output (their removed documents and shards included); an interrupted run resumes without it.")] = False,
) -> None:
    """Clean, language-filter, quality-filter, deduplicate and decontaminate documents; every removal is counted with its reason in manifest.json.

    Input files are grouped into shards that run in parallel; an interrupted run resumes where it stopped when the same command is run again.

    Examples:

      scratchlm data prepare --input raw/ --input more.jsonl --output runs/docs --keep-removed

      scratchlm data prepare --corpus shakespeare --output runs/docs --tokenizer runs/tok --set langid.min_score=0.8
    """
    from scratchlm.data.prepare import prepare

    settings = load_config(PrepareConfig, config, [*(overrides or []), *([f"executor.processes={processes}"] if processes is not None else [])])
    prepare(list(input or []), output, settings, corpus=corpus, tokenizer_path=tokenizer, keep_removed=keep_removed, overwrite=overwrite)


@data_app.command("train-quality")
@with_settings(QualityTrainConfig)
def data_train_quality(
    settings: QualityTrainConfig,
    positive: Annotated[list[Path], typer.Option("--positive", help="High-quality examples: text files, directories, JSONL or Parquet (repeatable).")],
    negative: Annotated[list[Path], typer.Option("--negative", help="Low-quality examples (repeatable).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model file; the suffix becomes .ftz when quantized, else .bin, with a .json sidecar of settings and metrics.")],
    text_field: Annotated[str, typer.Option(help="The text field of JSONL and Parquet inputs.")] = "text",
) -> None:
    """Train a fastText quality classifier for the `quality_classifier` step of `data prepare`.

    Examples:

      scratchlm data train-quality --positive good/ --negative spam.jsonl --output quality    # writes quality.ftz
    """
    from scratchlm.data.quality import train_quality_classifier

    metrics = train_quality_classifier(list(positive), list(negative), output, settings, text_field=text_field)
    print(json.dumps(metrics, indent=2))


@data_app.command("stats")
def data_stats(
    directory: Annotated[Path, typer.Argument(help="A documents directory (from `data prepare`) or a shards directory.")],
    tokenizer: Annotated[Optional[Path], typer.Option(help="Documents directory only: also count tokens and bytes per token with this tokenizer.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG: document lengths (documents) or tokens per split (shards).")] = None,
) -> None:
    """What a documents or shards directory holds: counts, lengths, languages, the prepare funnel, splits.

    Examples:

      scratchlm data stats runs/docs --plot lengths.png

      scratchlm data stats runs/docs/shards
    """
    from scratchlm.data import stats

    if stats.detect(directory) == "documents":
        result = stats.documents_stats(directory, tokenizer)
        console.print(stats.render_documents(result))
        if plot is not None:
            console.print(f"plot → {stats.plot_documents(result, plot)}")
    else:
        if tokenizer is not None:
            raise UserError(f"{directory} is a shards directory, whose manifest already gives its tokens; --tokenizer is for documents directories.")
        result = stats.shards_stats(directory)
        console.print(stats.render_shards(result))
        if plot is not None:
            console.print(f"plot → {stats.plot_shards(result, plot)}")


# ---- tokenizer ------------------------------------------------------------------------------


@tokenizer_app.command("train")
@with_settings(TokenizerTrainConfig)
def tokenizer_train(
    settings: TokenizerTrainConfig,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the tokenizer to.")],
    input: Annotated[Optional[list[Path]], typer.Option("--input", "-i", help="Text files, directories, JSONL(.zst/.gz) or Parquet files (repeatable).")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="Also train on a known corpus by name (e.g. shakespeare), fetched if missing.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a tokenizer already in --output (without it, that is refused before training; a directory holding other files is never replaced).")] = False,
) -> None:
    """Train a byte-level BPE tokenizer from scratch and save it (with an HF tokenizer.json).

    Examples:

      scratchlm tokenizer train --corpus shakespeare --vocab-size 8192 --output runs/tok

      scratchlm tokenizer train --input my_texts/ --input more.jsonl --pattern gpt4 --output runs/tok4
    """
    from scratchlm.tokenizer.train import train

    train(list(input or []), output, settings, corpus=corpus, overwrite=overwrite)


def _read_text(text: Optional[str], file: Optional[Path]) -> str:
    if text is not None and file is not None:
        raise UserError("Give the text either as an argument or with --file, not both.")
    if file is not None:
        if not file.is_file():
            raise UserError(f"No such file: {file}; check the --file path.")
        return file.read_bytes().decode("utf-8", errors="replace")
    if text is not None:
        return text
    if sys.stdin.isatty():
        raise UserError("No text to encode; pass it as an argument, with --file, or on standard input.")
    return sys.stdin.read()


@tokenizer_app.command("encode")
def tokenizer_encode(
    tokenizer: Annotated[Path, typer.Argument(help="Tokenizer directory, GPT-2 vocabulary directory or tokenizer.json.")],
    text: Annotated[Optional[str], typer.Argument(help="Text to encode (else --file or standard input).")] = None,
    file: Annotated[Optional[Path], typer.Option(help="Encode this file's text.")] = None,
    allow_special: Annotated[bool, typer.Option(help="Encode special-token strings in the text as special tokens (else they are plain text).")] = False,
    show: Annotated[bool, typer.Option(help="Print one line per token: id and its bytes, instead of the ids.")] = False,
) -> None:
    """Encode text to token ids.

    Examples:

      scratchlm tokenizer encode runs/tok "To be, or not to be" --show

      scratchlm tokenizer encode runs/tok --file play.txt
    """
    from scratchlm.tokenizer.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    content = _read_text(text, file)
    ids = tok.encode(content, allowed_special="all") if allow_special else tok.encode_ordinary(content)
    if show:
        for token_id in ids:
            print(f"{token_id}\t{tok.token_bytes(token_id)!r}")
    else:
        print(" ".join(map(str, ids)))


@tokenizer_app.command("decode")
def tokenizer_decode(
    tokenizer: Annotated[Path, typer.Argument(help="Tokenizer directory, GPT-2 vocabulary directory or tokenizer.json.")],
    ids: Annotated[Optional[list[str]], typer.Argument(help="Token ids (else read from standard input, separated by spaces, commas or newlines).")] = None,
) -> None:
    """Decode token ids to text (invalid UTF-8 becomes U+FFFD).

    Examples:

      scratchlm tokenizer decode runs/tok 430 309 44

      echo "430 309 44" | scratchlm tokenizer decode runs/tok
    """
    from scratchlm.tokenizer.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    words = ids if ids else sys.stdin.read().replace(",", " ").split()
    try:
        numbers = [int(word) for word in words]
    except ValueError as error:
        raise UserError(f"Token ids must be whole numbers ({error}).") from None
    sys.stdout.write(tok.decode(numbers) + "\n")


@tokenizer_app.command("stats")
def tokenizer_stats(
    tokenizer: Annotated[Path, typer.Argument(help="Tokenizer directory, GPT-2 vocabulary directory or tokenizer.json.")],
    input: Annotated[Optional[list[Path]], typer.Option("--input", "-i", help="Measure compression on these files (repeatable).")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="Measure compression on a known corpus (e.g. shakespeare).")] = None,
) -> None:
    """What a tokenizer holds, and how well it compresses a text: bytes per token, vocabulary use.

    Examples:

      scratchlm tokenizer stats runs/tok --corpus shakespeare
    """
    from scratchlm.tokenizer.stats import describe_tokenizer, measure
    from scratchlm.tokenizer.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    console.print(describe_tokenizer(tok))
    if input or corpus:
        console.print(measure(tok, list(input or []), corpus))


# ---- the main job -----------------------------------------------------------------------------


@app.command("speedrun", epilog=settings_help(RunConfig))
@with_settings(SpeedrunConfig, file_and_set=False)
def speedrun_command(
    settings: SpeedrunConfig,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting of the model/training preset, KEY=VALUE with a dotted key (repeatable), e.g. --set model.n_layer=4.")] = None,
) -> None:
    """The whole chain on the default corpus: corpus → tokenizer → shards → pretrain → eval → samples → report.md.

    Examples:

      scratchlm speedrun

      scratchlm speedrun --preset gpu --train-minutes 5 --out-dir runs/gpu
    """
    from scratchlm.speedrun import speedrun

    speedrun(settings, overrides or [])


# ---- training and generation ----------------------------------------------------------------


@app.command("train", epilog=settings_help(RunConfig))
def train_command(
    config: Annotated[str, typer.Argument(help="A TOML run config, or a preset name: tiny, shakespeare-cpu, gpt2-124m, gpt2-350m, gpt2-774m, gpt2-1.5b.")],
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, KEY=VALUE with a dotted key (repeatable), e.g. --set model.n_layer=4.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in train.out_dir from its newest readable checkpoint, exactly (at any number of processes).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run train.out_dir already holds (its checkpoints, metrics and samples are deleted).")] = False,
    nproc: Annotated[int, typer.Option("--nproc", help="Processes on this machine (one per GPU; on CPU, the cores are shared out): runs torchrun for you. The [parallel] settings say how they split the work.", rich_help_panel="Processes")] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Machines in the job; run the same command on each, with the same --rdzv-endpoint.", rich_help_panel="Processes")] = 1,
    rdzv_endpoint: Annotated[str, typer.Option("--rdzv-endpoint", help="HOST:PORT of the first machine, where the processes of a multi-machine job meet.", rich_help_panel="Processes")] = "",
    rdzv_id: Annotated[str, typer.Option("--rdzv-id", help="A name for the job, the same on every machine.", rich_help_panel="Processes")] = "scratchlm",
) -> None:
    """Pretrain a GPT on token shards, in one process or many.

    Examples:

      scratchlm train shakespeare-cpu --set data.shards=runs/speedrun/shards --set train.out_dir=runs/mine

      scratchlm train my_run.toml --resume    # continue a killed run exactly where it stopped

      scratchlm train gpt2-124m --nproc 8 --set parallel.fsdp=8    # FSDP over 8 GPUs

      torchrun --nproc-per-node 8 -m scratchlm train gpt2-124m --set parallel.tp=2    # the same, launched by hand
    """
    from scratchlm.train.run import pretrain

    run_config = load_config(RunConfig, resolve_config_file(config), overrides or [])
    if nproc < 1 or nnodes < 1:
        raise UserError(f"--nproc and --nnodes must be at least 1 (got {nproc} and {nnodes}).")
    if (nproc > 1 or nnodes > 1) and "WORLD_SIZE" not in os.environ:
        from scratchlm.train.launch import launch

        child = ["train", config, *[f"--set={o}" for o in overrides or []], *(["--resume"] if resume else []), *(["--overwrite"] if overwrite else [])]
        launch(run_config, child, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, rdzv_id=rdzv_id, resume=resume, overwrite=overwrite)
        return
    pretrain(run_config, resume=resume, overwrite=overwrite)


@app.command("generate")
@with_settings(SamplingConfig)
def generate_command(
    settings: SamplingConfig,
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory, or a run directory (its latest checkpoint).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue; empty starts a new document.")] = "",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most (fewer if the context fills up).")] = 200,
    num_samples: Annotated[int, typer.Option(help="Independent samples of the same prompt, generated as one batch.")] = 1,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="A string that ends the text, not printed (repeatable; \\n and \\t are a newline and a tab); <|endoftext|> always ends it.")] = None,
    overflow: Annotated[str, typer.Option(help="A prompt too long for the context: 'error', or 'truncate' (drop its left side, with a note).")] = "error",
    seed: Annotated[Optional[int], typer.Option(help="Seed for reproducible samples.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help=INFERENCE_DTYPE_HELP)] = "auto",
) -> None:
    """Generate text from a checkpoint with a KV cache, streaming the first sample.

    Examples:

      scratchlm generate runs/speedrun/train --prompt "ROMEO." --max-new-tokens 200 --top-k 200 --seed 1

      scratchlm generate runs/speedrun/train --num-samples 4 --temperature 1.0 --stop "\\n\\n"
    """
    from scratchlm.generate.engine import Delta, Engine, Request, run_samples
    from scratchlm.generate.layout import load_for_inference

    model, tokenizer, _ = load_for_inference(checkpoint, device, dtype)
    if not prompt and tokenizer.eot_id is None:
        raise UserError("The prompt is empty and this tokenizer has no <|endoftext|> to start from; pass --prompt TEXT.")
    prompt_ids = tokenizer.encode_ordinary(prompt) if prompt else [tokenizer.eot_id]
    stop_ids = (tokenizer.eot_id,) if tokenizer.eot_id is not None else ()
    engine = Engine(model, tokenizer, max_batch_size=max(num_samples, 1))
    stop_strings = tuple(s.replace("\\n", "\n").replace("\\t", "\t") for s in stop or ())
    request = Request(prompt_ids, max_new_tokens, settings, None, stop_ids, stop_strings, overflow)  # type: ignore[arg-type]
    started = False

    def stream(sample: int, delta: Delta) -> None:
        # The prompt goes out with the first text, once the engine has accepted the request.
        nonlocal started
        if sample == 0 and num_samples == 1:
            if not started:
                cut = delta.generation.prompt != prompt_ids
                sys.stdout.write("…" + tokenizer.decode(delta.generation.prompt) if cut else prompt)
                started = True
            sys.stdout.write(delta.text)
            sys.stdout.flush()

    generations = run_samples(engine, request, num_samples, seed, stream)
    if num_samples == 1:
        sys.stdout.write("\n")
    else:
        for i, generation in enumerate(generations):
            sys.stdout.write(f"--- sample {i + 1}\n{prompt}{generation.text}\n")


@app.command("chat")
@with_settings(SamplingConfig)
def chat_command(
    settings: SamplingConfig,
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory, or a run directory (its latest checkpoint).")],
    system: Annotated[str, typer.Option(help="A system prompt to start the conversation with (/system TEXT changes it).")] = "",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer at most (fewer if the context fills up).")] = 256,
    seed: Annotated[Optional[int], typer.Option(help="Seed for reproducible answers.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help=INFERENCE_DTYPE_HELP)] = "auto",
) -> None:
    """Chat with a checkpoint in the terminal, answers streamed as they are generated.

    A checkpoint from instruction tuning (or `convert from-hf` of a model with one) brings its chat template; any other model continues the conversation's text as it stands. The history is kept within the model's context: the oldest messages are dropped, with a note, when it fills up. Ctrl-C stops an answer; Ctrl-D or /quit leaves.

    Commands: /reset (forget the conversation), /temperature X, /system TEXT, /quit.

    Examples:

      scratchlm chat runs/speedrun/train

      scratchlm chat runs/sft --temperature 0.7 --system "You are a helpful assistant."
    """
    from scratchlm.generate.chat import ChatFormat, ChatSession
    from scratchlm.generate.layout import load_for_inference

    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens (--max-new-tokens) is {max_new_tokens}; it must be at least 1.")
    model, tokenizer, meta = load_for_inference(checkpoint, device, dtype)
    template = meta.get("chat_template")
    chat = ChatFormat(tokenizer, template if isinstance(template, str) and template else None)
    session = ChatSession(model, chat, settings, max_new_tokens, system, seed)
    mode = "its chat template" if chat.has_template else "plain continuation (no chat template in this checkpoint)"
    info(f"chatting with {mode}; commands: {ChatSession.COMMANDS}")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def note(text: str) -> None:
        info(f"[yellow]note:[/yellow] {text}")

    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not line.strip():
            continue
        if line.startswith("/"):
            reply = session.command(line)
            if reply is None:
                return
            write(reply + "\n")
            continue
        write("model> ")
        try:
            session.send(line, write, note)
        except KeyboardInterrupt:
            write(" (stopped)")
        except UserError as error:
            console.print(f"[bold red]error:[/bold red] {error}", highlight=False, soft_wrap=True)
        write("\n")


app.command("serve")(serve_command)
app.command("report")(report_command)


@finetune_app.command("instruct", epilog=settings_help(InstructConfig))
def finetune_instruct_command(
    config: Annotated[Optional[Path], typer.Argument(help="A TOML config with [data], [train], [optim] and [lora] sections (or none: --set everything).", show_default=False)] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, KEY=VALUE with a dotted key (repeatable), e.g. --set lora.rank=8.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the job in train.out_dir from its newest checkpoint, exactly.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the job train.out_dir already holds.")] = False,
) -> None:
    """Instruction tuning: teach a checkpoint to answer, with the loss on response tokens only.

    Records are Alpaca-style ({instruction, input, output}) or chat ({"messages": [...]}) in .json or .jsonl. The prompt format (data.format: alpaca, or chatml with two role tokens added to the tokenizer) becomes the checkpoints' chat template, so `scratchlm chat`, `serve` and `convert to-hf` use it. The held-out response loss is measured before and after, and held-out instructions are answered before and after tuning (responses.jsonl, with exact match and ROUGE-L).

    Examples:

      scratchlm finetune instruct --set data.train=../shared/data/instruction-data.json --set train.init_from=runs/gpt2 --set train.out_dir=runs/sft

      scratchlm finetune instruct sft.toml --set lora.rank=8    # LoRA: only the adapters train

    Then talk to the tuned model with the chat command, on train.out_dir.
    """
    from scratchlm.finetune.instruct import finetune_instruct

    settings = load_config(InstructConfig, config, overrides or [])
    finetune_instruct(settings, resume=resume, overwrite=overwrite)


@finetune_app.command("classify", epilog=settings_help(ClassifyConfig))
def finetune_classify_command(
    config: Annotated[Optional[Path], typer.Argument(help="A TOML config with [data], [train], [optim] and [lora] sections (or none: --set everything).", show_default=False)] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, KEY=VALUE with a dotted key (repeatable), e.g. --set data.train_blocks=4.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the job in train.out_dir from its newest checkpoint, exactly.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the job train.out_dir already holds.")] = False,
) -> None:
    """Classification: put a new head on a checkpoint and train it on labelled texts.

    Rows come from CSV, TSV, JSONL or Parquet (data.text_column, data.label_column); without data.val they are split (seeded, stratified by label). The head reads the last real token's hidden state (or the mean); the last data.train_blocks blocks, LoRA adapters or every weight train with it. At the end: accuracy, macro precision/recall/F1 and the confusion matrix per split, beside the majority-class baseline (report.json). Then `scratchlm classify` labels new texts.

    Examples:

      scratchlm finetune classify --set data.train=passages.csv --set train.init_from=runs/speedrun/train --set train.out_dir=runs/genre

      scratchlm finetune classify spam.toml --set lora.rank=8
    """
    from scratchlm.finetune.classify import finetune_classify

    settings = load_config(ClassifyConfig, config, overrides or [])
    finetune_classify(settings, resume=resume, overwrite=overwrite)


@finetune_app.command("dpo", epilog=settings_help(DPOConfig))
def finetune_dpo_command(
    config: Annotated[Optional[Path], typer.Argument(help="A TOML config with [data], [train], [optim] and [lora] sections (or none: --set everything).", show_default=False)] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, KEY=VALUE with a dotted key (repeatable), e.g. --set data.beta=0.2.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the job in train.out_dir from its newest checkpoint, exactly.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the job train.out_dir already holds.")] = False,
) -> None:
    """Preference tuning with DPO: prefer the chosen answer over the rejected one, relative to the starting checkpoint.

    Pairs are JSON lines {"prompt": text or [messages], "chosen": text, "rejected": text}; prompts are laid out with the checkpoint's chat template when it has one. The reference is train.init_from: its log-probabilities are computed once, before training. The held-out DPO loss, reward margin (chosen − rejected) and accuracy (margin > 0) are logged at every evaluation, before and after (summary.json).

    Examples:

      scratchlm finetune dpo --set data.train=pairs.jsonl --set train.init_from=runs/sft --set train.out_dir=runs/dpo

      scratchlm finetune dpo dpo.toml --set lora.rank=8 --set data.beta=0.2
    """
    from scratchlm.finetune.dpo import finetune_dpo

    settings = load_config(DPOConfig, config, overrides or [])
    finetune_dpo(settings, resume=resume, overwrite=overwrite)


@app.command("eval")
def eval_command(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint or run directory to evaluate; or the word `contamination` to check benchmark files against training data.")],
    data: Annotated[Optional[Path], typer.Option(help="Text to score: a .txt file, documents (.jsonl, .jsonl.zst, .parquet, or a directory of them), or a shards directory.", rich_help_panel="Text")] = None,
    stride: Annotated[Optional[int], typer.Option(help="Sliding-window step for texts longer than the context: each window scores its last STRIDE tokens with the rest as context (default: the context, disjoint windows).", rich_help_panel="Text")] = None,
    split: Annotated[Optional[str], typer.Option(help="The split of a shards directory to score (default: every split).", rich_help_panel="Text")] = None,
    task: Annotated[Optional[str], typer.Option(help="A multiple-choice task: a JSONL file of {context, choices, label}, or shakespeare-word-order / shakespeare-next-line (built from the plays the speedrun holds out).", rich_help_panel="Tasks")] = None,
    shots: Annotated[int, typer.Option(help="Solved examples shown before each item (few-shot), drawn from the task with --seed.", rich_help_panel="Tasks")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for the few-shot examples and a built task's items.", rich_help_panel="Tasks")] = 0,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32 (exact), bfloat16, float16 (GPU) or auto.")] = "float32",
    train: Annotated[Optional[list[Path]], typer.Option("--train", help="Training data for `eval contamination`: documents or a shards directory (repeatable).", rich_help_panel="Contamination")] = None,
    benchmark: Annotated[Optional[list[Path]], typer.Option("--benchmark", help="Benchmark files for `eval contamination`: JSONL items or text (repeatable).", rich_help_panel="Contamination")] = None,
    text_field: Annotated[Optional[list[str]], typer.Option("--text-field", help="JSONL fields holding a benchmark item's text (repeatable; default: text).", rich_help_panel="Contamination")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Evaluate a checkpoint on text (loss, perplexity, bits per byte; every token scored once) or on a multiple-choice task (accuracy ± standard error), or check benchmarks for contamination.

    Examples:

      scratchlm eval runs/speedrun/train --data runs/speedrun/shards --split val

      scratchlm eval runs/speedrun/train --data hamlet.txt --stride 128

      scratchlm eval runs/speedrun/train --task shakespeare-word-order

      scratchlm eval contamination --train runs/speedrun/shards --benchmark hellaswag.jsonl --text-field ctx --text-field endings
    """
    if checkpoint == "contamination" and not Path(checkpoint).exists():
        from scratchlm.eval.contamination import contamination, render

        if not train or not benchmark:
            raise UserError("eval contamination needs --train (documents or shards) and --benchmark (items to check).")
        result = contamination(train, benchmark, tuple(text_field or ("text",)))
        sys.stdout.write((json.dumps(result, indent=2) if as_json else render(result)) + "\n")
        return
    if (data is None) == (task is None):
        raise UserError("Give eval one of --data (text to score) or --task (a multiple-choice task file or name).")
    if task is not None:
        from scratchlm.eval.tasks import eval_task

        eval_task(Path(checkpoint), task, shots, seed, batch_size, device, dtype, as_json)
        return
    from scratchlm.eval.text import eval_text

    eval_text(Path(checkpoint), data, stride, batch_size, split, device, dtype, as_json)  # type: ignore[arg-type]


@app.command("classify")
def classify_command(
    checkpoint: Annotated[Path, typer.Argument(help="A classifier checkpoint (or its run directory) from `scratchlm finetune classify`.")],
    text: Annotated[Optional[list[str]], typer.Option("--text", "-t", help="A text to label (repeatable).")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="A .csv, .tsv, .jsonl or .parquet file of texts to label; one JSON line per text goes to stdout.")] = None,
    text_column: Annotated[str, typer.Option(help="The column of --input holding the text.")] = "text",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Label texts with a fine-tuned classifier: the most likely label and every label's probability.

    Examples:

      scratchlm classify runs/genre --text "O Romeo, Romeo, wherefore art thou Romeo?"

      scratchlm classify runs/genre --input passages.csv    # JSON lines on stdout
    """
    from scratchlm.checkpoints import load_classifier
    from scratchlm.finetune.classify import label_texts
    from scratchlm.finetune.classify_data import read_texts
    from scratchlm.runtime import resolve_device

    if bool(text) == (input is not None):
        raise UserError("Give the texts to label with --text TEXT (repeatable) or --input FILE, one of the two.")
    if input is not None:
        texts, skipped = read_texts(input, text_column)
        if skipped:
            info(f"[yellow]note:[/yellow] {input}: skipped {skipped.describe()}")
    else:
        texts = list(text or [])
    model, tokenizer, meta = load_classifier(checkpoint, resolve_device(device, "--device"))
    for result in label_texts(model, tokenizer, meta["labels"], texts):
        if input is not None:
            sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
            continue
        ranked = sorted(result["probabilities"].items(), key=lambda pair: -pair[1])
        shown = f"\t{result['text'][:60]!r}" if len(texts) > 1 else ""
        sys.stdout.write(f"{result['label']}\t" + "  ".join(f"{name} {p:.3f}" for name, p in ranked) + shown + "\n")


# ---- planning -------------------------------------------------------------------------------


@app.command("plan", epilog=settings_help(RunConfig))
def plan_command(
    config: Annotated[str, typer.Argument(help="A TOML run config, or a preset name: tiny, shakespeare-cpu, gpt2-124m, gpt2-350m, gpt2-774m, gpt2-1.5b.")],
    gpus: Annotated[Optional[int], typer.Option(help="GPUs to plan for (default: what the config's parallel settings name, dp × fsdp × tp when parallel.dp is set, else fsdp × tp).")] = None,
    gpu: Annotated[str, typer.Option(help="The GPU: a100-40gb, a100-80gb, h100 or h200 (memory, and bf16/TF32 peaks for the time).")] = "h100",
    mfu: Annotated[float, typer.Option(help="Model FLOPs utilization assumed for the step time, in (0, 1].")] = 0.4,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting, KEY=VALUE with a dotted key (repeatable), e.g. --set parallel.fsdp=8.")] = None,
) -> None:
    """Plan a training run before running it: parameters, FLOPs, memory per GPU, the GPUs it needs, step time and the compute-optimal length.

    Memory is counted tensor by tensor for the layout of the config's parallel settings (DDP, FSDP, tensor parallel, DeepSpeed ZeRO), its precision and activation checkpointing. Without --gpus the size that layout names is planned; the table also says how many GPUs the run needs with FSDP sharding.

    Examples:

      scratchlm plan gpt2-124m --gpus 8 --gpu h100

      scratchlm plan gpt2-1.5b --gpu a100-40gb --set parallel.fsdp=8 --set train.activation_checkpointing=true
    """
    from scratchlm.plan import default_gpus, plan, render

    settings = load_config(RunConfig, resolve_config_file(config), overrides or [])
    result = plan(settings, gpus if gpus is not None else default_gpus(settings.parallel), gpu, mfu)
    console.print(render(result, settings, config))


def main() -> None:
    """Console entry point: user errors print one line and exit 2; bugs keep their traceback."""
    try:
        app()
    except UserError as error:
        # Under a launcher every process reports its own error; rank 0's goes out unmarked.
        rank = int(os.environ.get("RANK", "0") or 0)
        where = f" (rank {rank})" if rank else ""
        console.print(f"[bold red]error{where}:[/bold red] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
