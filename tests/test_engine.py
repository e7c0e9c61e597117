"""The training engine's seams and run safety: evaluation scores each window once, a run
directory is never mixed with another run, broken checkpoints are named and skipped, bad
settings are refused before step 1, and init_from / parallelize behave."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_data, shared_file, synthetic_text

from scratchlm.checkpoints import find_checkpoint, list_checkpoints, load_model
from scratchlm.config import load_config, resolve_config_file
from scratchlm.data.documents import Document
from scratchlm.data.loader import TokenLoader
from scratchlm.data.shards import ShardConfig, write_shards
from scratchlm.errors import UserError
from scratchlm.eval.perplexity import ShardEvaluator, token_byte_lengths
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.tokenizer import Tokenizer, load_tokenizer
from scratchlm.train.distributed import parallelize
from scratchlm.train.metrics import read_metrics
from scratchlm.train.run import pretrain
from scratchlm.train.settings import RunConfig, TrainConfig

CLI = [sys.executable, "-c", "from scratchlm.cli import main; main()"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"), [synthetic_text(seed, 6000) for seed in range(4)])


def tiny(shards: Path, out_dir: Path, *overrides: str) -> RunConfig:
    return load_config(RunConfig, resolve_config_file("tiny"), [f"data.shards={json.dumps(str(shards))}", f"train.out_dir={json.dumps(str(out_dir))}", "train.max_steps=4", "train.eval_every=2", *overrides])


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "-q", *args], capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr, result.stderr
    return result.stderr


# ---- evaluation ---------------------------------------------------------------------------------


def test_full_split_evaluation_scores_every_window_exactly_once(shards: Path) -> None:
    """A batch size that does not divide the windows: the old wrapping loader scored up to
    batch−1 windows twice. Compared with scoring each window on its own."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.load(shards.parent / "tokenizer")
    model = GPT(GPTConfig(vocab_size=320, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    lengths = token_byte_lengths(tokenizer, 320)
    evaluator = ShardEvaluator(shards, "val", 7, 16, lengths)
    windows = evaluator.loader.num_windows
    assert windows % 7 != 0
    rows = []
    original = model.forward

    def counting(x, y=None, cache=None, **kwargs):
        rows.append(x.shape[0])
        return original(x, y, cache, **kwargs)

    model.forward = counting
    got = evaluator(model)
    assert sum(rows) == windows

    nats, nbytes, tokens = 0.0, 0, 0
    single = TokenLoader(shards, "val", 1, 16, mode="sequential")
    with torch.no_grad():
        for x, y in single.iter_epoch():
            logits, _ = original(x)
            per = F.cross_entropy(logits.view(-1, 320).double(), y.view(-1), reduction="none")
            counted = lengths[y.view(-1)] > 0
            nats += float(per[counted].sum())
            nbytes += int(lengths[y.view(-1)].sum())
            tokens += int(counted.sum())
    assert got["tokens"] == tokens
    assert math.isclose(got["loss"], nats / tokens, rel_tol=1e-6)
    assert math.isclose(got["bpb"], nats / math.log(2) / nbytes, rel_tol=1e-6)

    prefix = ShardEvaluator(shards, "val", 7, 16, lengths, max_tokens=16 * 10)
    rows.clear()
    prefix(model)
    assert sum(rows) == 10


# ---- run directories ----------------------------------------------------------------------------


def test_second_run_into_a_run_directory_is_refused_and_overwrite_replaces(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = pretrain(tiny(shards, out, "train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=5"))
    before = {p.name: p.stat().st_mtime_ns for p in list_checkpoints(out)}
    metrics_before = (out / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"already holds a run with 3 checkpoint\(s\).*--resume.*--overwrite"):
        pretrain(tiny(shards, out, "train.max_steps=4"))
    assert (out / "metrics.jsonl").read_text() == metrics_before
    assert {p.name: p.stat().st_mtime_ns for p in list_checkpoints(out)} == before
    with pytest.raises(UserError, match="only one of them"):
        pretrain(tiny(shards, out), resume=True, overwrite=True)

    second = pretrain(tiny(shards, out, "train.max_steps=4"), overwrite=True)
    assert [p.name for p in list_checkpoints(out)] == ["step_0000004"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    assert (out / "samples.md").read_text().count("## step") == 2
    assert second["checkpoint"].endswith("step_0000004") and first["step"] == 6
    _, _, meta = load_model(out)
    assert meta["step"] == 4


def test_cli_refusal_and_bad_output_paths_are_one_sentence(shards: Path, tmp_path: Path) -> None:
    base = ["train", "tiny", "--set", f"data.shards={json.dumps(str(shards))}", "--set", "train.max_steps=2"]
    out = tmp_path / "run"
    assert cli(*base, "--set", f"train.out_dir={json.dumps(str(out))}").returncode == 0
    assert "--overwrite" in one_line_error(cli(*base, "--set", f"train.out_dir={json.dumps(str(out))}"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(cli(*base, "--set", f"train.out_dir={json.dumps(str(a_file))}"))
    one_line_error(cli(*base, "--set", f"train.out_dir={json.dumps(str(a_file / 'under'))}"))


# ---- broken checkpoints ------------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(max(64, path.stat().st_size)))
    elif how == "list":
        path.write_text("[1, 2, 3]")
    elif how == "shape":
        config = json.loads(path.read_text())
        config["n_embd"] *= 2
        config["n_head"] = 2
        path.write_text(json.dumps(config))
    elif how == "missing":
        path.unlink()


DAMAGE = [
    ("model.safetensors", "truncate"),
    ("model.safetensors", "garbage"),
    ("model.safetensors", "missing"),
    ("config.json", "truncate"),
    ("config.json", "list"),
    ("config.json", "shape"),
    ("meta.json", "garbage"),
    ("meta.json", "missing"),
    ("train_state/state.pt", "truncate"),
    ("train_state/rng_rank0.pt", "garbage"),
    ("train_state/optimizer/.metadata", "missing"),
    ("train_state/optimizer/__0_0.distcp", "truncate"),
]


@pytest.fixture(scope="module")
def two_checkpoints(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    pretrain(tiny(shards, out, "train.max_steps=4", "train.checkpoint_every=2", "train.sample_tokens=0"))
    return out


@pytest.mark.parametrize("file,how", DAMAGE, ids=[f"{f}-{h}" for f, h in DAMAGE])
def test_a_broken_checkpoint_is_named_and_the_run_falls_back(two_checkpoints: Path, tmp_path: Path, file: str, how: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    newest = run / "checkpoints" / "step_0000004"
    _damage(newest / file, how)
    if file.startswith("train_state"):
        # Loading the model does not need the training state; resuming does.
        assert find_checkpoint(newest).path == newest
        with pytest.raises(UserError, match=re.escape(file.split("/")[-1])):
            find_checkpoint(newest, need_train_state=True)
        assert find_checkpoint(run, need_train_state=True).path.name == "step_0000002"
        return
    with pytest.raises(UserError, match=file.replace(".", r"\.")):
        load_model(newest)
    model, _, meta = load_model(run)  # falls back to the newest readable one
    assert meta["step"] == 2


def test_cli_generate_and_resume_fall_back_with_a_warning(two_checkpoints: Path, shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    _damage(run / "checkpoints" / "step_0000004" / "model.safetensors", "truncate")
    result = subprocess.run([*CLI, "generate", str(run), "--max-new-tokens", "3", "--seed", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "skipping step_0000004" in result.stderr and "step_0000002" in result.stderr and "loaded" in result.stderr
    broken = subprocess.run([*CLI, "generate", str(run / "checkpoints" / "step_0000004")], capture_output=True, text=True, timeout=120)
    assert "model.safetensors" in one_line_error(broken)
    resumed = subprocess.run([*CLI, "train", "tiny", "--resume", "--set", f"data.shards={json.dumps(str(shards))}", "--set", f"train.out_dir={json.dumps(str(run))}", "--set", "train.max_steps=4", "--set", "train.eval_every=2", "--set", "train.sample_tokens=0"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step_0000002" in resumed.stderr


def test_checkpoint_files_share_one_mode_and_a_failed_resave_keeps_the_old_copy(two_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scratchlm.train.checkpoint as writer

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    newest = run / "checkpoints" / "step_0000004"
    modes = {p.name: p.stat().st_mode & 0o777 for p in newest.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes

    model, tokenizer, meta = load_model(newest)
    replace = os.replace

    def failing(source, target):
        if Path(source).name.startswith(".tmp-"):
            raise OSError(28, "No space left on device")
        return replace(source, target)

    monkeypatch.setattr(writer.os, "replace", failing)
    with pytest.raises(OSError):
        writer.save_checkpoint(run, 4, model, tokenizer, {"tokens_seen": 0})
    assert load_model(run)[2] == meta  # the step-4 checkpoint is still there, unchanged


def test_ctrl_c_during_a_save_takes_effect_once_the_checkpoint_is_whole(two_checkpoints: Path, tmp_path: Path) -> None:
    import signal

    import scratchlm.train.checkpoint as writer

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    model, tokenizer, _ = load_model(run)

    def interrupted_midway(directory: Path) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        (directory / "marker").write_text("written after the interrupt")

    with pytest.raises(KeyboardInterrupt):
        writer.save_checkpoint(run, 6, model, tokenizer, {"tokens_seen": 0}, {"loader": {}, "layout": {"world_size": 1}}, keep=5, write_state=interrupted_midway)
    saved = run / "checkpoints" / "step_0000006"
    assert (saved / "train_state" / "marker").exists() and (saved / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---- settings refused before step 1 ------------------------------------------------------------


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.batch_tokens=-256", "batch_tokens"),
        ("train.batch_tokens=0", "batch_tokens"),
        ("train.micro_batch_size=0", "micro_batch_size"),
        ("model.n_head=0", "n_head"),
        ("train.max_steps=0", "max_steps"),
        ("train.max_steps=-3", "max_steps"),
        ('train.device="tpu"', "train.device"),
        ('train.device="cuda:banana"', "train.device"),
        ("optim.lr=nan", "optim.lr"),
    ],
)
def test_bad_settings_are_refused_at_start_up(shards: Path, tmp_path: Path, override: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        pretrain(tiny(shards, tmp_path / "run", override))
    assert not (tmp_path / "run").exists()


def test_validation_split_smaller_than_a_window_fails_before_training(tmp_path: Path) -> None:
    small = make_data(tmp_path, [synthetic_text(1, 3000), synthetic_text(2, 3000), "tiny val"])
    with pytest.raises(UserError, match="val split"):
        pretrain(tiny(small, tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_applies_a_new_max_steps_and_names_a_changed_model_setting(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    pretrain(tiny(shards, out, "train.max_steps=4"))
    with pytest.raises(UserError, match=r"model.n_layer is 3 here but 2 in"):
        pretrain(tiny(shards, out, "train.max_steps=6", "model.n_layer=3"), resume=True)
    with pytest.raises(UserError, match="already finished at step 4"):
        pretrain(tiny(shards, out, "train.max_steps=4"), resume=True)
    result = pretrain(tiny(shards, out, "train.max_steps=6"), resume=True)
    assert result["step"] == 6
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4, 6]


def test_unset_tokenizer_names_the_setting_and_gpt2_vocabulary_directories_train(tmp_path: Path) -> None:
    gpt2 = shared_file("gpt2")
    alone = tmp_path / "prep" / "shards"
    tokenizer = load_tokenizer(gpt2)
    texts = [synthetic_text(seed, 3000) for seed in range(3)]
    write_shards([Document(f"d{i}", t, {"part": "val" if i == 2 else "train"}) for i, t in enumerate(texts)], tokenizer, alone, ShardConfig(val_key="part", val_keys=["val"], workers=1))
    with pytest.raises(UserError, match="data.tokenizer is not set"):
        pretrain(tiny(alone, tmp_path / "run"))
    result = pretrain(tiny(alone, tmp_path / "run", f"data.tokenizer={json.dumps(str(gpt2))}", "train.max_steps=2", "train.eval_tokens=64", "train.sample_tokens=4"))
    assert result["step"] == 2 and math.isfinite(result["val_loss"])


# ---- time accounting ---------------------------------------------------------------------------


def test_throughput_excludes_evaluation_time(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = 0.3
    call = ShardEvaluator.__call__

    def slow_eval(self, model):
        time.sleep(slow)
        return call(self, model)

    monkeypatch.setattr(ShardEvaluator, "__call__", slow_eval)
    pretrain(tiny(shards, tmp_path / "run", "train.max_steps=6", "train.eval_every=1", "train.log_every=2", "train.sample_tokens=0"))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    lines = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert all(r["eval_s"] >= slow for r in evals)
    last = lines[-1]
    # Training seconds leave out the 6 evaluations (the final one included); wall time counts them.
    assert last["train_s"] < last["elapsed_s"] - 4 * slow
    previous = lines[-2]
    assert last["tokens_per_s"] == pytest.approx((last["tokens"] - previous["tokens"]) / (last["train_s"] - previous["train_s"]), rel=1e-6)


# ---- init_from ---------------------------------------------------------------------------------


def test_init_from_starts_a_new_run_from_trained_weights(shards: Path, tmp_path: Path) -> None:
    trained = pretrain(tiny(shards, tmp_path / "a", "train.max_steps=30", "train.eval_every=0", "optim.lr=1e-2", "train.sample_tokens=0"))
    fresh = pretrain(tiny(shards, tmp_path / "fresh", "train.max_steps=1", "train.eval_every=0", "train.sample_tokens=0"))
    continued = pretrain(tiny(shards, tmp_path / "b", "train.max_steps=1", "train.eval_every=0", "train.sample_tokens=0", f"train.init_from={json.dumps(str(tmp_path / 'a'))}", "model.n_layer=5"))
    first_loss = read_metrics(tmp_path / "b" / "metrics.jsonl")[0]["loss"]
    assert first_loss < read_metrics(tmp_path / "fresh" / "metrics.jsonl")[0]["loss"] - 0.5
    assert abs(first_loss - trained["val_loss"]) < 0.5
    assert continued["step"] == 1 and fresh["step"] == 1
    # The architecture comes from the checkpoint, whatever this config said.
    model, _, _ = load_model(tmp_path / "b")
    assert model.config.n_layer == 2


# ---- parallelize -------------------------------------------------------------------------------


@pytest.mark.parametrize("modern", [False, True], ids=["gpt2", "modern"])
def test_activation_checkpointing_same_loss_and_gradients_and_same_names(modern: bool) -> None:
    overrides = dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, qk_norm=True, bias=False) if modern else {}
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, **overrides)
    data = torch.randint(0, 64, (2, 17))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = GPT(config).train()
        names = list(model.state_dict())
        model = parallelize(model, TrainConfig(activation_checkpointing=checkpointing))
        assert list(model.state_dict()) == names
        _, loss = model(data[:, :-1], data[:, 1:])
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5, msg=name)


def test_ctrl_c_names_the_checkpoint_to_resume_from_and_resume_works(shards: Path, tmp_path: Path) -> None:
    import signal

    out = tmp_path / "run"

    def command(max_steps: int, *extra: str) -> list[str]:
        return [*CLI, "train", "tiny", "--set", f"data.shards={json.dumps(str(shards))}", "--set", f"train.out_dir={json.dumps(str(out))}", "--set", f"train.max_steps={max_steps}", "--set", "train.checkpoint_every=5", "--set", "train.eval_every=0", "--set", "train.sample_tokens=0", *extra]

    process = subprocess.Popen(command(100_000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list_checkpoints(out):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted at step" in err and "continue with --resume" in err and "Traceback" not in err
    step = find_checkpoint(out).meta["step"]
    resumed = subprocess.run(command(step + 3, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert find_checkpoint(out).meta["step"] == step + 3


def test_compile_on_cpu_without_a_compiler_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    import scratchlm.train.distributed as distributed

    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(UserError, match="C\\+\\+ compiler"):
        parallelize(model, TrainConfig(compile=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_fp8_without_fp8_tensor_cores_is_one_sentence() -> None:
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(UserError, match="train.fp8 needs a GPU with FP8 tensor cores .* this run is on a CPU; set train.fp8 = false"):
        parallelize(model, TrainConfig(fp8=True))
