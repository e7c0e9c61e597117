"""The inference engine: continuous batching, rows leaving, stop strings, streaming text, overflow.

Every batched result is checked against the plain one-prompt-at-a-time loop (`generate_tokens`),
whose cached path is itself checked against full recomputation in test_generate.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import synthetic_text

from scratchlm.errors import UserError
from scratchlm.generate.engine import Engine, Request, generate_tokens
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.generate.stream import TextStream
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

torch.set_num_threads(1)

GREEDY = SamplingConfig(temperature=0.0)
MODERN = {"position": "rope", "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 1, "qk_norm": True}


def make_model(**architecture: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=48, n_layer=2, n_head=2, n_embd=32, **architecture)).eval()  # type: ignore[arg-type]


def alone(model: GPT, prompt: list[int], n: int, sampling: SamplingConfig = GREEDY, stop_ids: tuple[int, ...] = ()) -> list[int]:
    """One prompt by itself, through the plain loop, cut before its first stop id."""
    out = [int(t) for t in generate_tokens(model, [prompt], n, sampling, stop_ids=stop_ids)]
    return out[: next((i for i, t in enumerate(out) if t in stop_ids), len(out))]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))


@pytest.mark.parametrize("architecture", [{}, MODERN], ids=["gpt2", "modern"])
def test_requests_joining_and_leaving_a_running_batch_each_get_what_they_get_alone(architecture: dict) -> None:
    model = make_model(**architecture)
    engine = Engine(model, max_batch_size=3)
    first = [([5], 12), ([1, 2, 3, 4, 5, 6, 7], 3), ([9, 9, 3], 7), ([2, 40, 17, 8, 1], 9)]
    # Joining later: a prompt longer than what runs (the batch is padded) and shorter ones.
    later = [(list(range(10, 30)), 6), ([7], 4), ([33, 34], 10)]
    generations = [engine.submit(Request(p, n, GREEDY)) for p, n in first]
    sizes = []
    for step in range(200):
        if step == 2:
            generations += [engine.submit(Request(p, n, GREEDY)) for p, n in later]
        engine.step()
        sizes.append(len(engine.running))
        if engine.idle:
            break
    assert engine.idle and engine.cache is None
    assert max(sizes) == 3  # never more rows than the batch size
    for generation, (prompt, n) in zip(generations, first + later):
        assert generation.tokens == alone(model, prompt, n), prompt
        assert generation.finish_reason == "length"


def test_finished_rows_leave_and_the_cache_keeps_only_what_remains() -> None:
    model = make_model()
    engine = Engine(model, max_batch_size=4)
    long = engine.submit(Request(list(range(1, 21)), 2, GREEDY))  # long prompt, short answer
    short = engine.submit(Request([3], 15, GREEDY))
    engine.step()  # both prefilled, one token each
    assert engine.cache is not None and engine.cache.batch_size == 2 and engine.cache.length == 20
    engine.step()  # the long one is done and leaves; its padding columns go with it
    assert long.finished and engine.running == [short]
    assert engine.cache.batch_size == 1 and engine.cache.length == 2 and engine.cache.offsets is None
    while not engine.idle:
        engine.step()
    assert short.tokens == alone(model, [3], 15)


def test_each_request_keeps_its_own_settings_and_a_seed_gives_the_same_text_in_any_batch() -> None:
    model = make_model(**MODERN)
    sampled = Request([4, 5, 6], 10, SamplingConfig(temperature=1.0, top_k=20), seed=7)
    by_itself = Engine(model).run([sampled])[0].tokens
    crowd = [Request([1], 10, SamplingConfig(temperature=1.3), seed=1), Request([8, 9], 10, GREEDY), sampled, Request([2, 2, 2, 2], 10, SamplingConfig(temperature=0.7, top_p=0.9))]
    in_a_crowd = Engine(model, max_batch_size=4).run(crowd)
    assert in_a_crowd[2].tokens == by_itself
    assert in_a_crowd[1].tokens == alone(model, [8, 9], 10)
    penalized = SamplingConfig(temperature=0, repetition_penalty=1.5)
    mixed = Engine(model, max_batch_size=2).run([Request([1, 2, 3], 8, penalized), Request([6], 8, GREEDY)])
    assert mixed[0].tokens == alone(model, [1, 2, 3], 8, penalized)
    assert mixed[1].tokens == alone(model, [6], 8)


def test_stop_ids_end_one_request_and_not_the_others() -> None:
    model = make_model()
    reference = alone(model, [5], 12)
    stop = reference[3]
    generations = Engine(model).run([Request([5], 12, GREEDY, stop_ids=(stop,)), Request([5], 12, GREEDY)])
    assert generations[0].tokens == reference[: reference.index(stop)] and generations[0].finish_reason == "stop"
    assert generations[1].tokens == reference and generations[1].finish_reason == "length"


def test_cancelled_requests_leave_without_disturbing_the_rest() -> None:
    model = make_model()
    engine = Engine(model, max_batch_size=2)
    gone = engine.submit(Request([1, 2], 20, GREEDY))
    kept = engine.submit(Request([3], 20, GREEDY))
    never = engine.submit(Request([4], 20, GREEDY))
    engine.step()
    gone.cancel()
    never.cancel()
    deltas = engine.step()
    assert {(d.generation is gone, d.finish_reason) for d in deltas if d.generation is not kept} == {(True, "cancelled"), (False, "cancelled")}
    assert engine.running == [kept]
    while not engine.idle:
        engine.step()
    assert kept.tokens == alone(model, [3], 20) and len(gone.tokens) == 1 and never.tokens == []


def test_context_overflow_is_an_error_or_cuts_the_prompt_on_the_left_with_a_note() -> None:
    model = make_model()  # context 48
    engine = Engine(model)
    with pytest.raises(UserError, match="60 tokens, but the model's context is 48.*--overflow truncate"):
        engine.submit(Request(list(range(60)), 5, GREEDY))
    cut = engine.prepare(Request([i % 64 for i in range(60)], 10, GREEDY, overflow="truncate"))
    assert cut.prompt == [i % 64 for i in range(60)][-38:] and cut.max_new_tokens == 10
    assert "first 22 were dropped" in cut.notes[0]
    # Never less than half the context of prompt: the answer is cut instead, with a note.
    cut = engine.prepare(Request(list(range(60)), 40, GREEDY, overflow="truncate"))
    assert len(cut.prompt) == 24 and cut.max_new_tokens == 24 and len(cut.notes) == 2
    fits = engine.prepare(Request([1, 2], 100, GREEDY))
    assert fits.max_new_tokens == 46 and "room for 46 new tokens" in fits.notes[0]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (Request([1], 0), r"max_new_tokens \(--max-new-tokens\) is 0"),
        (Request([], 5), "The prompt is empty"),
        (Request([1], 5, overflow="wrap"), r"overflow \(--overflow\) is 'wrap'"),  # type: ignore[arg-type]
        (Request([1, 99], 5), "outside the vocabulary of 64"),
        (Request([1], 5, stop_strings=("x",)), "Stop strings need the model's tokenizer"),
    ],
)
def test_bad_requests_are_one_sentence(request_: Request, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Engine(make_model()).submit(request_)
    with pytest.raises(UserError, match=r"--max-batch-size\) is 0"):
        Engine(make_model(), max_batch_size=0)


# ---- text: incremental decoding and stop strings ------------------------------------------


def feed(tokenizer: Tokenizer, text: str, stops: tuple[str, ...] = ()) -> tuple[list[str], str, bool]:
    """Push `text`'s tokens one by one; the pieces released, the final flush and whether it stopped."""
    stream = TextStream(tokenizer, stops)
    pieces = [stream.push(t) for t in tokenizer.encode_ordinary(text)]
    return pieces, stream.finish(), stream.stopped


def test_streamed_text_is_whole_characters_and_adds_up_to_the_decoded_text(tokenizer: Tokenizer) -> None:
    text = "Héllo 🙂 wörld, 日本語 and more 🚀🚀 text"
    pieces, tail, stopped = feed(tokenizer, text)
    assert "".join(pieces) + tail == text and not stopped
    assert all("\ufffd" not in piece for piece in pieces)
    # An emoji is several byte tokens here: nothing is released until its last byte arrives.
    assert len(tokenizer.encode_ordinary("🙂")) > 1
    assert "" in pieces


def test_an_unfinished_character_at_the_end_becomes_a_replacement_character(tokenizer: Tokenizer) -> None:
    stream = TextStream(tokenizer)
    first_byte_of_emoji = tokenizer.encode_ordinary("🙂")[0]
    assert stream.push(tokenizer.encode_ordinary("a")[0]) == "a"
    assert stream.push(first_byte_of_emoji) == ""
    assert stream.finish() == "\ufffd" and stream.text == "a\ufffd"


@pytest.mark.parametrize(
    ("text", "stops", "released"),
    [
        ("the word was here\nUser: more", ("\nUser:",), "the word was here"),
        ("one two three", ("two", "one t"), ""),  # the earliest stop wins
        ("they said nothing", ("said", "zzz"), "they "),
        ("no stop at all, just th", ("the end",), "no stop at all, just th"),  # a held prefix comes out at the end
    ],
)
def test_stop_strings_split_over_tokens_cut_the_text_before_them(tokenizer: Tokenizer, text: str, stops: tuple[str, ...], released: str) -> None:
    pieces, tail, stopped = feed(tokenizer, text, stops)
    assert "".join(pieces) + tail == released
    assert stopped == any(s in text for s in stops)


def test_the_engine_stops_at_a_stop_string_and_streams_what_comes_before(tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    prompt = tokenizer.encode_ordinary("the")
    full = Engine(model, tokenizer).run([Request(prompt, 30, GREEDY)])[0]
    assert len(full.text) > 6
    stop = full.text[3:6]
    streamed: list[str] = []
    cut = Engine(model, tokenizer).run([Request(prompt, 30, GREEDY, stop_strings=(stop,))], on_delta=lambda d: streamed.append(d.text))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]
    assert "".join(streamed) == cut.text
    assert len(cut.tokens) < len(full.tokens)


def test_the_engine_runs_in_the_weights_dtype() -> None:
    model = make_model(**MODERN).to(torch.bfloat16)
    engine = Engine(model, max_batch_size=2)
    first, second = engine.submit(Request([1, 2, 3], 6, GREEDY)), engine.submit(Request([4], 6, GREEDY))
    engine.step()
    assert engine.cache is not None and engine.cache.keys is not None and engine.cache.keys.dtype == torch.bfloat16
    while not engine.idle:
        engine.step()
    assert len(first.tokens) == len(second.tokens) == 6
