"""Generation against independent references: a hand-written greedy loop, the no-cache path,
sampling distributions computed from the formulas, models whose next token is known, and
checkpoints and the CLI round-tripped through disk and a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_text
from safetensors import safe_open

from scratchlm.checkpoints import find_checkpoint, load_model
from scratchlm.errors import UserError
from scratchlm.generate.engine import generate, generate_tokens
from scratchlm.generate.sampling import SamplingConfig, sample_next
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.checkpoint import save_checkpoint

torch.set_num_threads(1)

GREEDY = SamplingConfig(temperature=0.0)


def tiny(**overrides: object) -> GPTConfig:
    settings: dict[str, object] = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32)
    settings.update(overrides)
    return GPTConfig(**settings)  # type: ignore[arg-type]


def make_model(seed: int = 0, **overrides: object) -> GPT:
    """A tiny model with large random weights, so that its logits are peaked and argmax is stable."""
    torch.manual_seed(seed)
    model = GPT(tiny(**overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
    return model.eval()


def hand_greedy(model: GPT, prompts: list[list[int]], n: int) -> list[list[int]]:
    """The reference: full forward over the whole sequence, argmax of the last logits, append."""
    ids = torch.tensor(prompts)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(ids)
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, len(prompts[0]) :].tolist()


def collect(*args: object, **kwargs: object) -> list[list[int]]:
    """generate_tokens' stream as one list of new tokens per sequence."""
    steps = list(generate_tokens(*args, **kwargs))  # type: ignore[arg-type]
    return torch.stack(steps, dim=1).tolist() if steps else []


class NextTokenModel(GPT):
    """A GPT whose next token is always (last + 1) mod V, with a large margin; honours the cache."""

    def forward(self, idx, targets=None, cache=None, last_only=False):  # type: ignore[override]
        V = self.config.vocab_size
        if cache is not None:
            assert cache.length + idx.size(1) <= cache.max_length
            cache.advance(idx.size(1))
        logits = 10.0 * F.one_hot((idx + 1) % V, V).float()
        return (logits[:, -1:] if last_only else logits), None


class FixedDistributionModel(GPT):
    """A GPT whose next-token distribution is always the same (given as logits)."""

    def __init__(self, config: GPTConfig, logits: torch.Tensor) -> None:
        super().__init__(config)
        self.fixed = logits

    def forward(self, idx, targets=None, cache=None, last_only=False):  # type: ignore[override]
        if cache is not None:
            cache.advance(idx.size(1))
        return self.fixed.expand(idx.size(0), 1 if last_only else idx.size(1), -1).clone(), None


# ---- greedy decoding ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"position": "rope", "n_kv_head": 2}], ids=["gpt2", "rope_gqa"])
def test_greedy_cache_equals_no_cache_and_hand_loop(overrides: dict) -> None:
    model = make_model(**overrides)
    torch.manual_seed(1)
    prompts = torch.randint(0, 64, (2, 5)).tolist()
    want = hand_greedy(model, prompts, 20)
    assert want[0] != want[1]  # the two sequences really are different
    cached = collect(model, prompts, 20, GREEDY)
    uncached = collect(model, prompts, 20, GREEDY, use_cache=False)
    assert cached == want
    assert uncached == want
    # One prompt at a time gives the same as the batch.
    assert [collect(model, [p], 20, GREEDY)[0] for p in prompts] == want
    assert generate(model, prompts[0], 20, GREEDY) == [want[0]]


def test_generation_restores_training_mode() -> None:
    model = make_model().train()
    collect(model, [[1, 2, 3]], 3, GREEDY)
    assert model.training
    generate(model, [1, 2, 3], 3, GREEDY)  # the engine, as the trainer's sampler calls it
    assert model.training
    model.eval()
    collect(model, [[1, 2, 3]], 3, GREEDY)
    generate(model, [1, 2, 3], 3, GREEDY)
    assert not model.training


# ---- seeded sampling ------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible() -> None:
    model = make_model()
    model.lm_head.weight.data.mul_(0.05)  # flatten the distribution: sampling has choices to make
    sampling = SamplingConfig(temperature=1.0)
    prompts = [[1, 2, 3]] * 3
    a = collect(model, prompts, 20, sampling, seed=1)
    torch.manual_seed(123)  # the global RNG must not matter
    b = collect(model, prompts, 20, sampling, seed=1)
    c = collect(model, prompts, 20, sampling, seed=2)
    assert a == b
    assert a != c
    assert a[0] != a[1]  # samples within a batch are independent
    # The cache does not change what a seed draws.
    assert collect(model, prompts, 20, sampling, seed=1, use_cache=False) == a
    assert generate(model, [1, 2, 3], 20, sampling, seed=1, num_samples=3) == a


# ---- sample_next ----------------------------------------------------------------------------


def frequencies(logits: torch.Tensor, config: SamplingConfig, n: int = 20000, previous: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Empirical distribution of n draws from one row of logits (drawn as one batch)."""
    batch = logits.expand(n, -1).clone()
    prev = previous.expand(n, -1).clone() if previous is not None else None
    draws = sample_next(batch, config, torch.Generator().manual_seed(seed), previous=prev)
    return torch.bincount(draws, minlength=logits.size(-1)).double() / n


def test_temperature_zero_and_top_k_one_are_argmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(50, 100)
    want = logits.argmax(-1)
    assert torch.equal(sample_next(logits, SamplingConfig(temperature=0.0)), want)
    assert torch.equal(sample_next(logits, SamplingConfig(temperature=1.0, top_k=1), torch.Generator().manual_seed(0)), want)
    assert torch.equal(sample_next(logits, SamplingConfig(temperature=5.0, top_k=1), torch.Generator().manual_seed(1)), want)


def test_plain_sampling_follows_softmax_of_logits_over_temperature() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5, 2.0]])
    for temperature in (1.0, 0.5, 2.0):
        want = torch.softmax(logits[0].double() / temperature, dim=-1)
        got = frequencies(logits, SamplingConfig(temperature=temperature))
        assert torch.allclose(got, want, atol=0.015), (temperature, got, want)


def test_top_k_keeps_only_the_k_largest() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 40)
    top5 = set(torch.topk(logits[0], 5).indices.tolist())
    got = frequencies(logits, SamplingConfig(temperature=1.0, top_k=5), n=5000)
    drawn = set(torch.nonzero(got).flatten().tolist())
    assert drawn == top5
    # Renormalized over the 5: probabilities proportional to exp(logit).
    want = torch.zeros(40, dtype=torch.float64)
    idx = torch.tensor(sorted(top5))
    want[idx] = torch.softmax(logits[0, idx].double(), dim=-1)
    assert torch.allclose(got, want, atol=0.03)
    # top_k larger than the vocabulary is no limit.
    assert set(torch.nonzero(frequencies(logits, SamplingConfig(temperature=1.0, top_k=1000), n=5000)).flatten().tolist()) > top5


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(0.5, {2}), (0.7, {2, 0}), (0.8, {2, 0}), (0.81, {2, 0, 3}), (0.96, {2, 0, 3, 1}), (1.0, {2, 0, 3, 1})],
)
def test_top_p_keeps_smallest_set_reaching_p(top_p: float, kept: set[int]) -> None:
    # Probabilities 0.5, 0.3, 0.15, 0.05 placed at ids 2, 0, 3, 1 (so sorting matters).
    probabilities = torch.tensor([0.3, 0.05, 0.5, 0.15], dtype=torch.float64)
    logits = probabilities.log().float()[None]
    got = frequencies(logits, SamplingConfig(temperature=1.0, top_p=top_p))
    assert set(torch.nonzero(got).flatten().tolist()) == kept
    want = torch.zeros(4, dtype=torch.float64)
    idx = torch.tensor(sorted(kept))
    want[idx] = probabilities[idx] / probabilities[idx].sum()
    assert torch.allclose(got, want, atol=0.015), (got, want)


def test_top_p_and_top_k_on_a_batch_work_row_by_row() -> None:
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]], dtype=torch.float64)
    logits = probabilities.log().float().repeat(500, 1)
    draws = sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.7), torch.Generator().manual_seed(0)).view(500, 2)
    assert set(draws[:, 0].tolist()) == {0, 1}
    assert set(draws[:, 1].tolist()) == {3, 2}


def penalized(logits: torch.Tensor, seen: set[int], penalty: float) -> torch.Tensor:
    """The CTRL / HF formula: a seen token's logit is divided by the penalty if positive, else multiplied."""
    out = logits.clone().double()
    for i in seen:
        out[i] = out[i] / penalty if out[i] > 0 else out[i] * penalty
    return out


def test_repetition_penalty_matches_formula() -> None:
    logits = torch.tensor([[2.0, 1.0, -1.0, -0.5, 0.0, 0.5]])
    previous = torch.tensor([[0, 2, 0, 5]])  # 0 seen twice: penalized once
    want = torch.softmax(penalized(logits[0], {0, 2, 5}, 1.5), dim=-1)
    got = frequencies(logits, SamplingConfig(temperature=1.0, repetition_penalty=1.5), n=40000, previous=previous)
    assert torch.allclose(got, want, atol=0.012), (got, want)
    plain = torch.softmax(logits[0].double(), dim=-1)
    assert all(got[i] / got[1] < plain[i] / plain[1] for i in (0, 2, 5))  # less likely than an unseen token
    # Greedy: the penalty moves the argmax away from a seen token (positive and negative logits).
    assert sample_next(logits, SamplingConfig(temperature=0, repetition_penalty=3.0), previous=torch.tensor([[0]])).item() == 1
    negative = torch.tensor([[-1.0, -1.2, -3.0]])
    assert sample_next(negative, SamplingConfig(temperature=0, repetition_penalty=1.5), previous=torch.tensor([[0]])).item() == 1
    # Without previous tokens, or with penalty 1, nothing changes.
    assert sample_next(logits, SamplingConfig(temperature=0, repetition_penalty=3.0)).item() == 0
    assert sample_next(logits, SamplingConfig(temperature=0, repetition_penalty=1.0), previous=torch.tensor([[0]])).item() == 0


@pytest.mark.parametrize(
    "settings",
    [{"temperature": -0.1}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_p": -0.2}, {"repetition_penalty": 0.0}, {"repetition_penalty": -1.0}],
)
def test_bad_sampling_settings_are_user_errors(settings: dict) -> None:
    with pytest.raises(UserError):
        SamplingConfig(**settings)


# ---- stop ids -------------------------------------------------------------------------------


def test_each_sequence_stops_at_its_stop_id() -> None:
    model = NextTokenModel(tiny())
    steps = list(generate_tokens(model, [[0, 3], [0, 1]], 20, GREEDY, stop_ids=[6]))
    # Row 0 reaches 6 after 3 tokens and then repeats it; the loop ends when row 1 reaches 6 too.
    assert [s.tolist() for s in steps] == [[4, 2], [5, 3], [6, 4], [6, 5], [6, 6]]
    # No stop ids: runs for max_new_tokens.
    assert collect(model, [[0, 3]], 7, GREEDY) == [[4, 5, 6, 7, 8, 9, 10]]
    assert collect(model, [[0, 3]], 7, GREEDY, use_cache=False) == [[4, 5, 6, 7, 8, 9, 10]]


def test_generate_cuts_before_the_stop_id_and_streams_only_kept_tokens() -> None:
    model = NextTokenModel(tiny())
    streamed: list[tuple[int, int]] = []
    out = generate(model, [0, 1], 20, GREEDY, stop_ids=[5, 9], num_samples=2, on_token=lambda i, t: streamed.append((i, t)))
    assert out == [[2, 3, 4], [2, 3, 4]]
    assert streamed == [(0, 2), (1, 2), (0, 3), (1, 3), (0, 4), (1, 4)]
    # A stop id never reached: max_new_tokens tokens.
    assert generate(model, [0, 1], 4, GREEDY, stop_ids=[50]) == [[2, 3, 4, 5]]
    # The first new token is the stop id: nothing.
    assert generate(model, [0, 4], 4, GREEDY, stop_ids=[5]) == [[]]


def test_sampled_samples_stop_independently() -> None:
    # Next token is 1 or the stop id 0 with equal probability, whatever came before.
    V = 64
    logits = torch.full((V,), float("-inf"))
    logits[0] = logits[1] = 0.0
    model = FixedDistributionModel(tiny(), logits)
    sampling = SamplingConfig(temperature=1.0)
    raw = collect(model, [[5]] * 8, 20, sampling, seed=3, stop_ids=[0])
    out = generate(model, [5], 20, sampling, seed=3, stop_ids=[0], num_samples=8)
    assert out == generate(model, [5], 20, sampling, seed=3, stop_ids=[0], num_samples=8)  # a seed repeats
    assert all(set(row) <= {1} for row in out)
    assert len({len(row) for row in out}) > 1  # they really stopped at different steps
    for row in raw:  # after a stop, a sequence only repeats it
        if 0 in row:
            assert set(row[row.index(0) :]) == {0}


def test_vocab_size_keeps_sampling_off_padding_rows() -> None:
    # The most likely token is a padding row (id 62 of 64) that a 60-token tokenizer cannot decode.
    logits = torch.zeros(64)
    logits[62] = 20.0
    logits[7] = 5.0
    model = FixedDistributionModel(tiny(), logits)
    assert generate(model, [1], 3, GREEDY) == [[62, 62, 62]]
    assert generate(model, [1], 3, GREEDY, vocab_size=60) == [[7, 7, 7]]
    sampled = generate(model, [1], 30, SamplingConfig(temperature=3.0), seed=0, vocab_size=60, num_samples=4)
    assert all(t < 60 for row in sampled for t in row)


# ---- context limit --------------------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_max_new_tokens_is_clamped_to_the_context(use_cache: bool) -> None:
    model = make_model(block_size=16)
    prompt = [[1, 2, 3, 4, 5]]
    out = collect(model, prompt, 100, GREEDY, use_cache=use_cache)
    assert len(out[0]) == 16 - 5
    assert out == hand_greedy(model, prompt, 11)
    # A prompt one short of the context still gets its one token.
    assert len(collect(model, [list(range(15))], 10, GREEDY, use_cache=use_cache)[0]) == 1


def test_prompt_as_long_as_the_context_is_user_error() -> None:
    model = make_model(block_size=16)
    with pytest.raises(UserError, match="context"):
        list(generate_tokens(model, [list(range(16))], 5))
    with pytest.raises(UserError):
        generate(model, list(range(20)), 5)


def test_bad_prompts_are_user_errors() -> None:
    model = make_model()
    with pytest.raises(UserError):
        generate(model, [], 5)
    with pytest.raises(UserError, match="without the KV cache takes prompts of one token length"):
        list(generate_tokens(model, [[1, 2], [1, 2, 3]], 5, use_cache=False))
    with pytest.raises(UserError, match="empty"):
        list(generate_tokens(model, [[1, 2], []], 5))
    with pytest.raises(UserError):
        list(generate_tokens(model, [], 5))


# ---- checkpoints ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))


def save(run_dir: Path, step: int, model: GPT, tokenizer: Tokenizer, keep: int = 2) -> Path:
    return save_checkpoint(run_dir, step, model, tokenizer, meta={"tokens_seen": 0}, keep=keep)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": False}, {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "qk_norm": True, "tie_embeddings": False, "bias": False}],
    ids=["tied", "untied", "modern"],
)
def test_checkpoint_round_trip(tmp_path: Path, tokenizer: Tokenizer, overrides: dict) -> None:
    model = make_model(vocab_size=320, **overrides)
    assert model.config.vocab_size >= tokenizer.vocab_size
    idx = torch.randint(0, tokenizer.vocab_size, (2, 32))
    with torch.no_grad():
        want, _ = model(idx)
    path = save(tmp_path, 7, model, tokenizer)
    loaded, loaded_tokenizer, meta = load_model(tmp_path)
    assert not loaded.training
    assert loaded.config == model.config
    with torch.no_grad():
        got, _ = loaded(idx)
    assert torch.equal(got, want)
    assert loaded_tokenizer == tokenizer
    assert loaded_tokenizer.encode_ordinary("the word, 123") == tokenizer.encode_ordinary("the word, 123")
    assert meta["step"] == 7 and meta["tokens_seen"] == 0
    # The tied head is stored once and comes back tied.
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in set(f.keys())) == (not model.config.tie_embeddings)
    assert (loaded.lm_head.weight is loaded.transformer.wte.weight) == model.config.tie_embeddings
    assert json.loads((path / "config.json").read_text())["vocab_size"] == 320
    # The checkpoint directory itself loads the same.
    again, _, _ = load_model(path)
    with torch.no_grad():
        assert torch.equal(again(idx)[0], want)


def test_resolve_checkpoint_picks_newest_and_keep_deletes_older(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = make_model(vocab_size=300)
    first = save(tmp_path, 1, model, tokenizer, keep=5)
    assert find_checkpoint(tmp_path).path == first
    assert find_checkpoint(first).path == first
    save(tmp_path, 2, model, tokenizer, keep=5)
    newest = save(tmp_path, 10, model, tokenizer, keep=5)  # 10 after 2: numeric order, not text
    assert find_checkpoint(tmp_path).path == newest
    assert load_model(tmp_path)[2]["step"] == 10
    # keep=2: the next save leaves only the two newest.
    save(tmp_path, 100, model, tokenizer, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(names) == 2
    assert find_checkpoint(tmp_path).path.name.endswith("100")
    assert load_model(tmp_path)[2]["step"] == 100
    assert {load_model(tmp_path / "checkpoints" / n)[2]["step"] for n in names} == {10, 100}
    # A half-written (temporary) checkpoint is never taken as the latest.
    (tmp_path / "checkpoints" / ".tmp-step_9999999").mkdir()
    assert load_model(tmp_path)[2]["step"] == 100


def test_missing_checkpoint_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        find_checkpoint(tmp_path)  # an empty directory
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError):
        find_checkpoint(tmp_path)  # checkpoints/ but nothing in it
    with pytest.raises(UserError):
        load_model(tmp_path / "does-not-exist")


# ---- the CLI --------------------------------------------------------------------------------

CLI = [sys.executable, "-c", "from scratchlm.cli import main; main()"]


def start(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_cli_generate(tmp_path: Path, tokenizer: Tokenizer) -> None:
    run_dir = tmp_path / "run"
    model = make_model(vocab_size=tokenizer.vocab_size)
    save(run_dir, 3, model, tokenizer)
    greedy = ["generate", str(run_dir), "--prompt", "the", "--max-new-tokens", "10", "--seed", "1", "--temperature", "0", "--dtype", "float32"]
    sampled = ["generate", str(run_dir), "--prompt", "the", "--max-new-tokens", "10", "--seed", "1", "--temperature", "1.0", "--dtype", "float32"]
    # Started together: each is mostly interpreter start-up.
    processes = [start(*greedy), start(*sampled), start(*sampled), start("generate", str(tmp_path / "missing"), "--prompt", "the")]
    (rc1, out1, err1), (rc3, out3, err3), (rc4, out4, _), (rc5, out5, err5) = [finish(p) for p in processes]

    assert rc1 == 0, err1
    assert out1.startswith("the")
    # The text is the prompt and the greedy continuation of the hand-written loop, cut at <|endoftext|>.
    prompt_ids = tokenizer.encode_ordinary("the")
    new = hand_greedy(model, [prompt_ids], 10)[0]
    if tokenizer.eot_id in new:
        new = new[: new.index(tokenizer.eot_id)]
    assert out1 == "the" + tokenizer.decode(new) + "\n"

    assert rc3 == 0, err3
    assert out3.startswith("the")
    assert out3 == out4  # same seed, same sample
    want = generate(model, prompt_ids, 10, SamplingConfig(temperature=1.0), seed=1, stop_ids=[tokenizer.eot_id])[0]
    assert out3 == "the" + tokenizer.decode(want) + "\n"

    assert rc5 == 2
    assert out5 == ""
    assert err5.startswith("error:")
    assert len(err5.strip().splitlines()) == 1, err5
    assert "Traceback" not in err5


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """The CLI entry point in this process (cheaper than a subprocess): its exit status."""
    from scratchlm.cli import main

    monkeypatch.setattr(sys, "argv", ["scratchlm", *args])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # typer installs its own; put ours back after
    with pytest.raises(SystemExit) as exit:
        main()
    return exit.value.code or 0


def test_cli_never_prints_padding_ids(tmp_path: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Embedding rounded up to 320 rows for a 300-token tokenizer; the model prefers padding row 310.
    model = make_model(vocab_size=320, tie_embeddings=False)
    with torch.no_grad():
        bias = model.transformer.ln_f.bias
        model.transformer.ln_f.weight.zero_()  # the final norm outputs `bias` at every position
        model.lm_head.weight[310] = 10 * bias
    save(tmp_path, 1, model, tokenizer)
    assert run_main(monkeypatch, "generate", str(tmp_path), "--prompt", "the", "--max-new-tokens", "5", "--temperature", "0", "--dtype", "float32") == 0
    out, err = capsys.readouterr()
    assert "error" not in err
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokenizer.encode_ordinary("the")]))
    assert logits[0, -1].argmax().item() == 310  # without the limit, greedy would pick the padding row
    first = logits[0, -1, : tokenizer.vocab_size].argmax().item()
    assert out.startswith("the" + tokenizer.decode([first])[:1])


def test_cli_empty_prompt_without_endoftext_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1, special_tokens=[]))
    assert tokenizer.eot_id is None
    save(tmp_path, 1, make_model(vocab_size=320), tokenizer)
    code = run_main(monkeypatch, "generate", str(tmp_path), "--max-new-tokens", "3")
    err = capsys.readouterr().err
    # The checkpoint it loaded is named first, then the one-sentence error.
    assert code == 2 and err.startswith("loaded ") and err.splitlines()[-1].startswith("error:") and "Traceback" not in err, err


def test_inference_never_imports_the_training_package() -> None:
    code = (
        "import sys\n"
        "import scratchlm.checkpoints, scratchlm.runtime, scratchlm.generate.engine, scratchlm.eval.perplexity\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('scratchlm.train'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overrides", [{}, {"mlp": "swiglu", "n_kv_head": 2, "bias": False}], ids=["gpt2", "swiglu_gqa"])
def test_version_1_checkpoints_with_fused_tensors_still_load(tmp_path: Path, tokenizer: Tokenizer, overrides: dict) -> None:
    """Written before q/k/v and gate/up were split: fused `c_attn` ([q; k; v]) and SwiGLU's fused
    `c_fc` ([gate; up]), meta version 1. They load split, with the same logits."""
    from safetensors.torch import load_file, save_file

    model = make_model(vocab_size=320, **overrides)
    path = save(tmp_path, 3, model, tokenizer)
    state = load_file(str(path / "model.safetensors"))
    fused = {}
    for name, tensor in state.items():
        if ".attn.c_q." in name:
            fused[name.replace("c_q", "c_attn")] = torch.cat([state[name.replace("c_q", part)] for part in ("c_q", "c_k", "c_v")])
        elif ".attn.c_k." in name or ".attn.c_v." in name or ".mlp.c_gate." in name:
            continue
        elif ".mlp.c_fc." in name and model.config.mlp == "swiglu":
            fused[name] = torch.cat([state[name.replace("c_fc", "c_gate")], tensor])
        else:
            fused[name] = tensor
    save_file(fused, str(path / "model.safetensors"))
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    loaded, _, _ = load_model(path)
    idx = torch.randint(0, tokenizer.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": float("nan")}, "temperature (--temperature) is nan; it must be 0 (greedy) or more"),
        ({"temperature": -1.0}, "temperature (--temperature) is -1.0"),
        ({"top_k": -3}, "top_k (--top-k) is -3"),
        ({"top_p": 0.0}, "top_p (--top-p) is 0.0; it must be within (0, 1]"),
        ({"top_p": float("nan")}, "top_p (--top-p) is nan"),
        ({"min_p": 1.0}, "min_p (--min-p) is 1.0; it must be within [0, 1)"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty (--repetition-penalty) is inf"),
    ],
)
def test_each_bad_sampling_setting_is_named_with_its_value(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        SamplingConfig(**settings)


def test_bad_generation_sizes_are_named() -> None:
    model = make_model()
    with pytest.raises(UserError, match=re.escape("max_new_tokens (--max-new-tokens) is -5; it must be at least 1")):
        generate(model, [1, 2], -5)
    with pytest.raises(UserError, match=re.escape("num_samples (--num-samples) is 0; it must be at least 1")):
        generate(model, [1, 2], 5, num_samples=0)


def test_min_p_keeps_only_tokens_near_the_most_likely() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    drawn = {int(sample_next(logits, SamplingConfig(temperature=1.0, min_p=0.5), generator)) for _ in range(200)}
    assert drawn == {0, 1}  # 0.15 and 0.05 are under half of 0.5


@pytest.mark.parametrize("architecture", [{}, {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1}])
def test_batched_greedy_over_mixed_prompt_lengths_equals_one_prompt_at_a_time(architecture: dict) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, **architecture)).eval()
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7], [9, 9, 3], [2, 40, 17, 8, 1]]
    alone = [hand_greedy(model, [prompt], 12)[0] for prompt in prompts]
    assert collect(model, prompts, 12, GREEDY) == alone
    # With a repetition penalty the padding (each row's own first token) changes nothing either.
    penalized = SamplingConfig(temperature=0, repetition_penalty=1.3)
    assert collect(model, prompts, 8, penalized) == [collect(model, [prompt], 8, penalized)[0] for prompt in prompts]
