"""Instruction-tuning data: records, prompt formats, loss masks, truncation, bucketed batches, resume."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, shared_file, synthetic_text

from scratchlm.errors import UserError
from scratchlm.finetune.instruct_data import (
    FORMATS,
    IGNORE_INDEX,
    Example,
    InstructBatches,
    alpaca_conversation,
    describe,
    encode_examples,
    get_format,
    read_records,
    require_special_tokens,
    split_holdout,
)
from scratchlm.generate.chat import ChatFormat, Message
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts

torch.set_num_threads(1)

ALPACA = FORMATS["alpaca"]
CHATML = FORMATS["chatml"]
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


@pytest.fixture(scope="module")
def base_tokenizer() -> Tokenizer:
    return train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))


@pytest.fixture(scope="module")
def tokenizer(base_tokenizer: Tokenizer) -> Tokenizer:
    """The trained tokenizer with ChatML's tokens added, as the training job will add them."""
    n = base_tokenizer.vocab_size
    specials = {**base_tokenizer.special_tokens, "<|im_start|>": n, "<|im_end|>": n + 1}
    return Tokenizer(base_tokenizer.ranks, base_tokenizer.pattern, specials, base_tokenizer.name)


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


def words(seed: int, n: int) -> str:
    return " ".join(random.Random(seed).choice(["the", "water", "people", "answer", "school", "day"]) for _ in range(n))


def target_ids(example: Example) -> list[int]:
    """The ids the example is trained to predict, through the documented shift."""
    return [label for label in example.labels[1:] if label != IGNORE_INDEX]


# ---- prompt formats ---------------------------------------------------------------------------


def test_the_alpaca_prompt_is_the_books_text_byte_for_byte(tmp_path: Path, tokenizer: Tokenizer) -> None:
    records = [
        {"instruction": "Edit the following sentence for grammar.", "input": "He go to the park every day.", "output": "He goes to the park every day."},
        {"instruction": "Convert 45 kilometers to meters.", "input": "", "output": "45 kilometers is 45000 meters."},
        {"instruction": "Name a color.", "output": "Blue."},  # input may be absent
    ]
    conversations = read_records(write_json(tmp_path / "data.json", records))
    expected = [
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nEdit the following sentence for grammar."
        "\n\n### Input:\nHe go to the park every day."
        "\n\n### Response:\n",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nConvert 45 kilometers to meters."
        "\n\n### Response:\n",
        PREAMBLE + "\n\n### Instruction:\nName a color.\n\n### Response:\n",
    ]
    chat = ChatFormat(tokenizer, ALPACA.template)
    assert [chat.render(c[:-1]) for c in conversations] == expected
    examples, counts = encode_examples(conversations, tokenizer, ALPACA, max_length=1000)
    for example, prompt, record in zip(examples, expected, records):
        response = tokenizer.encode_ordinary(record["output"]) + [tokenizer.eot_id]
        assert example.ids == tokenizer.encode_ordinary(prompt) + response
        assert target_ids(example) == response
    assert counts == Counter(records=3, examples=3)


def test_alpaca_system_message_replaces_the_preamble_and_earlier_answers_end_with_eot(tokenizer: Tokenizer) -> None:
    chat = ChatFormat(tokenizer, ALPACA.template)
    messages = [Message("system", "Be terse."), Message("user", "Q1"), Message("assistant", "A1"), Message("user", "Q2")]
    assert chat.render(messages) == "Be terse.\n\n### Instruction:\nQ1\n\n### Response:\nA1<|endoftext|>\n\n### Instruction:\nQ2\n\n### Response:\n"
    assert chat.encode(messages).count(tokenizer.eot_id) == 1  # written by the template: the id
    with pytest.raises(UserError, match="system message can only come first"):
        chat.render([Message("user", "Q"), Message("system", "late")])


def test_chatml_renders_as_hugging_face_models_do(tokenizer: Tokenizer) -> None:
    chat = ChatFormat(tokenizer, CHATML.template)
    messages = [Message("system", "S"), Message("user", "U")]
    assert chat.render(messages) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert get_format("chatml") is CHATML
    with pytest.raises(UserError, match="Unknown prompt format 'vicuna'"):
        get_format("vicuna")


def test_the_templates_render_the_same_in_transformers(tokenizer: Tokenizer) -> None:
    """to-hf writes the template to tokenizer_config.json: transformers must lay out the same text."""
    render_jinja_template = getattr(pytest.importorskip("transformers.utils.chat_template_utils"), "render_jinja_template", None)
    if render_jinja_template is None:
        pytest.skip("this transformers has no render_jinja_template (it came with 4.50)")
    messages = [Message("system", "Be terse."), Message("user", "Q1\n\n### Input:\nx"), Message("assistant", "A1"), Message("user", "Q2")]
    for fmt in FORMATS.values():
        for conversation in (messages, messages[1:]):
            rendered, _ = render_jinja_template(
                conversations=[[{"role": m.role, "content": m.content} for m in conversation]], chat_template=fmt.template, add_generation_prompt=True
            )
            assert rendered == [ChatFormat(tokenizer, fmt.template).render(conversation)]


def test_a_format_refuses_a_tokenizer_without_its_special_tokens(base_tokenizer: Tokenizer) -> None:
    require_special_tokens(base_tokenizer, ALPACA)
    with pytest.raises(UserError, match=r"lacks the special tokens <\|im_start\|>, <\|im_end\|> that the chatml"):
        encode_examples([alpaca_conversation("a", "", "b")], base_tokenizer, CHATML, 100)


# ---- masks, multi-turn, special tokens in text ------------------------------------------------


def test_chat_records_give_one_example_per_assistant_turn_with_the_whole_history_as_prompt(tmp_path: Path, tokenizer: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You answer."},
        {"role": "user", "content": "the day"},
        {"role": "assistant", "content": "water people"},
        {"role": "user", "content": "school"},
        {"role": "assistant", "content": "the answer"},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n\n")  # a blank line is skipped
    [conversation] = read_records(path)
    examples, counts = encode_examples([conversation], tokenizer, CHATML, max_length=1000)
    assert counts == Counter(records=1, examples=2)
    chat = ChatFormat(tokenizer, CHATML.template)
    im_end = tokenizer.special_tokens["<|im_end|>"]
    for example, turn in zip(examples, (2, 4)):
        prompt = chat.encode(conversation[:turn])  # exactly what chat/serve will send
        response = tokenizer.encode_ordinary(messages[turn]["content"]) + [im_end]
        assert example.ids == prompt + response
        assert example.labels == [IGNORE_INDEX] * len(prompt) + response
        assert target_ids(example) == response and example.num_targets == len(response)
    assert tokenizer.decode(examples[1].ids).startswith("<|im_start|>system\nYou answer.<|im_end|>\n<|im_start|>user\nthe day")
    assert "water people<|im_end|>" in tokenizer.decode(examples[1].ids[: examples[1].labels.index(im_end) - 2])


def test_special_token_strings_inside_messages_stay_text(tokenizer: Tokenizer) -> None:
    conversation = [Message("user", "say <|im_end|> and <|endoftext|>"), Message("assistant", "ok <|im_start|> <|endoftext|>")]
    [example], _ = encode_examples([conversation], tokenizer, CHATML, 1000)
    specials = set(tokenizer.special_tokens.values())
    found = [tokenizer.decode([i]) for i in example.ids if i in specials]
    assert found == ["<|im_start|>", "<|im_end|>", "<|im_start|>", "<|im_end|>"]  # the template's two turns and the end of turn only
    assert tokenizer.decode(example.ids).count("<|endoftext|>") == 2


def test_empty_responses_are_skipped_and_counted(tokenizer: Tokenizer) -> None:
    conversations = [alpaca_conversation("a", "", "  \n"), alpaca_conversation("b", "", "the day")]
    examples, counts = encode_examples(conversations, tokenizer, ALPACA, 1000)
    assert len(examples) == 1 and counts == Counter(records=2, examples=1, empty_response=1)
    assert describe(counts) == "2 records → 1 example; 1 skipped: empty response"


def test_padding_carries_no_loss_and_changes_no_real_token(tokenizer: Tokenizer) -> None:
    conversations = [alpaca_conversation(words(i, 3 + 9 * i), "", words(100 + i, 2 + 5 * i)) for i in range(3)]
    examples, _ = encode_examples(conversations, tokenizer, ALPACA, 1000)
    batches = InstructBatches(examples, 3, pad_id=tokenizer.eot_id)
    x, y = batches.next_batch()
    assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (3, max(len(e.ids) for e in examples) - 1)
    assert batches.targets_per_epoch == sum(e.num_targets for e in examples) == int((y != IGNORE_INDEX).sum())
    for x_row, y_row in zip(x.tolist(), y.tolist()):
        example = next(e for e in examples if e.ids[:-1] == x_row[: len(e.ids) - 1])
        n = len(example.ids) - 1
        assert y_row[:n] == example.labels[1:]
        assert x_row[n:] == [tokenizer.eot_id] * (len(x_row) - n) and y_row[n:] == [IGNORE_INDEX] * (len(y_row) - n)
    # The loss of the padded batch is the target-weighted mean of each example's own loss.
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, block_size=512, n_layer=1, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        together = model(x, y)[1]
        alone = [(model(torch.tensor([e.ids[:-1]]), torch.tensor([e.labels[1:]]))[1], e.num_targets) for e in examples]
    assert torch.allclose(together, sum(loss * n for loss, n in alone) / sum(n for _, n in alone), atol=1e-5)


# ---- truncation -------------------------------------------------------------------------------


def lengths(tokenizer: Tokenizer, conversation: list[Message], fmt=ALPACA) -> tuple[list[int], list[int]]:
    prompt = ChatFormat(tokenizer, fmt.template).encode(conversation[:-1])
    return prompt, tokenizer.encode_ordinary(conversation[-1].content) + tokenizer.encode(fmt.end_of_turn, allowed_special="all")


def test_a_long_prompt_is_cut_from_its_start_and_the_response_kept_whole(tokenizer: Tokenizer) -> None:
    conversation = alpaca_conversation(words(1, 60), "", "the day")
    prompt, response = lengths(tokenizer, conversation)
    max_length = len(response) + len(prompt) // 2 + 3
    [example], counts = encode_examples([conversation], tokenizer, ALPACA, max_length)
    assert counts == Counter(records=1, examples=1, prompt_truncated=1)
    kept = max_length - len(response)
    assert example.ids == prompt[-kept:] + response and len(example.ids) == max_length
    assert tokenizer.decode(example.ids).endswith("\n\n### Response:\nthe day<|endoftext|>")
    assert describe(counts) == "1 record → 1 example; 1 prompt cut from the start"


def test_a_long_response_keeps_the_minimum_prompt_share_and_loses_its_tail(tokenizer: Tokenizer) -> None:
    conversation = alpaca_conversation(words(2, 20), "", words(3, 80))
    prompt, response = lengths(tokenizer, conversation)
    max_length = 40
    assert len(prompt) > 20 and len(response) > 40
    [example], counts = encode_examples([conversation], tokenizer, ALPACA, max_length, min_prompt_share=0.5)
    assert counts == Counter(records=1, examples=1, prompt_truncated=1, response_truncated=1)
    assert example.ids == prompt[-20:] + response[:20]
    assert target_ids(example) == response[:20] and tokenizer.eot_id not in example.ids
    # A short prompt is never cut; the response gets the rest.
    short = alpaca_conversation("", "", words(3, 80))
    short_prompt, _ = lengths(tokenizer, short)
    [example], counts = encode_examples([short], tokenizer, ALPACA, len(short_prompt) + 5, min_prompt_share=1.0)
    assert example.ids == short_prompt + response[:5] and counts == Counter(records=1, examples=1, response_truncated=1)


def test_a_turn_whose_response_would_be_cut_entirely_is_skipped_and_counted(tokenizer: Tokenizer) -> None:
    conversations = [alpaca_conversation(words(4, 40), "", "the day"), alpaca_conversation("a", "", "b")]
    prompt, _ = lengths(tokenizer, conversations[0])
    short_prompt, short_response = lengths(tokenizer, conversations[1])
    max_length = len(short_prompt) + len(short_response)
    assert len(prompt) >= max_length
    examples, counts = encode_examples(conversations, tokenizer, ALPACA, max_length, min_prompt_share=1.0)
    assert len(examples) == 1 and counts == Counter(records=2, examples=1, skipped_too_long=1)
    assert describe(counts) == "2 records → 1 example; 1 skipped: too long"


def test_every_example_fits_max_length_and_trains_on_at_least_one_response_token(tokenizer: Tokenizer) -> None:
    conversations = [alpaca_conversation(words(i, i % 30), words(50 + i, i % 7), words(99 + i, 1 + i % 40)) for i in range(40)]
    for max_length in (2, 3, 10, 37, 80, 500):
        for share in (0.0, 0.3, 0.5, 0.9, 1.0):
            examples, counts = encode_examples(conversations, tokenizer, ALPACA, max_length, min_prompt_share=share)
            assert counts["examples"] + counts["skipped_too_long"] == 40
            assert all(len(e.ids) <= max_length and len(e.ids) == len(e.labels) and e.num_targets >= 1 for e in examples)
    with pytest.raises(UserError, match="max_length is 1"):
        encode_examples(conversations, tokenizer, ALPACA, 1)


def test_describe_says_everything_in_one_sentence() -> None:
    counts = Counter(records=1100, examples=1099, prompt_truncated=2, response_truncated=3, skipped_too_long=1)
    assert describe(counts) == "1,100 records → 1,099 examples; 2 prompts cut from the start, 3 responses truncated, 1 skipped: too long"
    assert describe(Counter(records=2, examples=3)) == "2 records → 3 examples; none truncated or skipped"


# ---- batches ----------------------------------------------------------------------------------


def fake_examples(n: int, seed: int = 0) -> list[Example]:
    """Examples of varied length whose first id tells them apart (ids stay below 300)."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        prompt, response = rng.randint(1, 40), rng.randint(1, 40)
        ids = [i % 250] + [rng.randrange(300) for _ in range(prompt + response)]
        examples.append(Example(ids, [IGNORE_INDEX] * (prompt + 1) + ids[prompt + 1 :]))
    return examples


def rows_of(batch: tuple[torch.Tensor, torch.Tensor]) -> list[tuple[int, ...]]:
    """The rows of x with their padding (pad id 0, no target) cut off, to compare across batches."""
    x, y = batch
    out = []
    for x_row, y_row in zip(x.tolist(), y.tolist()):
        if all(label == IGNORE_INDEX for label in y_row):
            continue  # a rank's stand-in row for an empty share
        last = max(i for i, label in enumerate(y_row) if label != IGNORE_INDEX)
        out.append(tuple(x_row[: last + 1]))
    return out


def test_each_epoch_is_every_example_once_and_epochs_differ(tokenizer: Tokenizer) -> None:
    examples = fake_examples(50)
    batches = InstructBatches(examples, 4, seed=3, bucket_batches=2)
    assert len(batches) == 13 and batches.tokens_per_epoch == sum(len(e.ids) - 1 for e in examples)
    expected = sorted(tuple(e.ids[:-1]) for e in examples)
    epochs = []
    for epoch in range(2):
        seen = [row for _ in range(len(batches)) for row in rows_of(batches.next_batch())]
        assert sorted(seen) == expected and batches.epoch == epoch + 1
        epochs.append(seen)
    assert epochs[0] != epochs[1]
    other_seed = InstructBatches(examples, 4, seed=4, bucket_batches=2)
    assert [row for _ in range(len(batches)) for row in rows_of(other_seed.next_batch())] != epochs[0]


def test_bucketing_puts_similar_lengths_together() -> None:
    examples = fake_examples(512)

    def padding(batches: InstructBatches) -> int:
        """Padding tokens in one epoch: every cell of x that holds no example's token."""
        return sum(batches.next_batch()[0].numel() for _ in range(len(batches))) - batches.tokens_per_epoch

    bucketed = padding(InstructBatches(examples, 8, bucket_batches=64))
    unbucketed = padding(InstructBatches(examples, 8, bucket_batches=1))  # a window of one batch sorts nothing
    assert bucketed < unbucketed / 5, (bucketed, unbucketed)


def test_resuming_gives_exactly_the_batches_an_uninterrupted_run_draws() -> None:
    examples = fake_examples(37)
    reference = InstructBatches(examples, 4, seed=7, bucket_batches=2)
    expected = [reference.next_batch() for _ in range(25)]  # crosses two epoch boundaries (10 batches each)
    for stop in (0, 6, 10, 19):
        first = InstructBatches(examples, 4, seed=7, bucket_batches=2)
        for _ in range(stop):
            first.next_batch()
        state = json.loads(json.dumps(first.state_dict()))
        resumed = InstructBatches(examples, 4, seed=7, bucket_batches=2)
        resumed.load_state_dict(state)
        for want in expected[stop:]:
            got = resumed.next_batch()
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert resumed.batches == 25 and resumed.state_dict() == reference.state_dict()
    with pytest.raises(UserError, match="resume with the same data"):
        InstructBatches(examples, 4, seed=8, bucket_batches=2).load_state_dict(state)
    with pytest.raises(UserError, match="resume with the same data"):
        InstructBatches(examples[:-1], 4, seed=7, bucket_batches=2).load_state_dict(state)


def test_ranks_split_each_global_batch_and_evaluation_sees_every_example_once() -> None:
    examples = fake_examples(23)
    single = InstructBatches(examples, 6, seed=1)
    ranks = [InstructBatches(examples, 3, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(len(single) + 1):
        together = rows_of(single.next_batch())
        split = [rows_of(r.next_batch()) for r in ranks]
        if len(together) == 5:  # the epoch's last batch: 3 + 2
            assert split == [together[:3], together[3:]]
        else:
            assert split[0] + split[1] == together
    expected = sorted(tuple(e.ids[:-1]) for e in examples)
    evaluated = [row for r in ranks for batch in r.iter_eval(5) for row in rows_of(batch)]
    assert sorted(evaluated) == expected
    assert [len(list(r.iter_eval(5))) for r in ranks] == [3, 3]  # 23 = 10 + 10 + 3: rank 1's last share is empty
    last_x, last_y = list(ranks[1].iter_eval(5))[-1]
    assert last_x.shape[0] == 1 and bool((last_y == IGNORE_INDEX).all())  # a stand-in row without loss
    once = [rows_of(b) for b in single.iter_eval(4)]
    assert once == [rows_of(b) for b in single.iter_eval(4)]  # a fixed order
    assert sum(once, []) == sorted(sum(once, []), key=len, reverse=True)


def test_batches_refuse_nothing_to_batch() -> None:
    with pytest.raises(UserError, match="no instruction examples"):
        InstructBatches([], 4)


# ---- holding out ------------------------------------------------------------------------------


def test_split_holdout_is_seeded_and_disjoint() -> None:
    conversations = [alpaca_conversation(str(i), "", "x") for i in range(100)]
    train, held = split_holdout(conversations, 0.1, seed=0)
    assert len(held) == 10 and len(train) == 90
    assert sorted(c[0].content for c in train + held) == sorted(c[0].content for c in conversations)
    assert split_holdout(conversations, 0.1, seed=0) == (train, held)
    assert split_holdout(conversations, 0.1, seed=1)[1] != held
    assert split_holdout(conversations, 0.0, seed=0) == (conversations, [])
    assert len(split_holdout(conversations[:3], 0.01, seed=0)[1]) == 1  # at least one held out
    with pytest.raises(UserError, match="held-out fraction is 1"):
        split_holdout(conversations, 1, seed=0)
    with pytest.raises(UserError, match="cannot be split"):
        split_holdout(conversations[:1], 0.5, seed=0)


# ---- reading ----------------------------------------------------------------------------------


def test_json_and_jsonl_alpaca_and_chat_records_read_alike(tmp_path: Path) -> None:
    records = [
        {"instruction": "I", "input": "In", "output": "O"},
        {"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]},
    ]
    from_json = read_records(write_json(tmp_path / "a.json", records))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "c.json").write_text("".join(json.dumps(r) + "\n" for r in records))  # JSONL named .json
    assert from_json == read_records(tmp_path / "b.jsonl") == read_records(tmp_path / "c.json")
    assert from_json == [[Message("user", "I\n\n### Input:\nIn"), Message("assistant", "O")], [Message("user", "U"), Message("assistant", "A")]]


def alpaca(**fields: object) -> dict:
    return {"instruction": "I", "input": "", "output": "O", **fields}


def chat(*messages: tuple[str, object]) -> dict:
    return {"messages": [{"role": role, "content": content} for role, content in messages]}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.json", None, r"missing\.json does not exist; pass a JSON or JSONL file"),
        ("empty.jsonl", " \n", r"empty\.jsonl is empty"),
        ("empty-list.json", "[]", r"empty-list\.json holds no records"),
        ("bad.json", '[{"instruction": "I",\n "output": }]', r"bad\.json is not valid JSON \(line 2, column 12: Expecting value\)"),
        ("bad.jsonl", '{"instruction": "I", "output": "O"}\n\n{"instruction": \n', r"bad\.jsonl line 3 is not valid JSON"),
        ("list.json", [["I", "O"]], r"list\.json record 1 is a JSON list; each record must be an object"),
        ("neither.json", [alpaca(), {"prompt": "p"}], r"neither\.json record 2 has neither 'instruction' and 'output'"),
        ("no-instruction.json", [{"output": "O"}], r"record 1 has no 'instruction'; an Alpaca record needs"),
        ("no-output.jsonl", [alpaca(), {"instruction": "I"}], r"no-output\.jsonl record 2 \(line 2\) has no 'output'"),
        ("number.json", [alpaca(output=3)], r"record 1 has a number as 'output'; 'instruction', 'input' and 'output' must be strings"),
        ("null-input.json", [alpaca(input=None)], r"record 1 has a null as 'input'"),
        ("role.json", [chat(("user", "U"), ("bot", "A"))], r"record 1 message 2 has role 'bot'; a role must be one of system, user, assistant"),
        ("content.json", [chat(("user", ["U"]), ("assistant", "A"))], r"record 1 message 1 is not an object with string 'role' and 'content'"),
        ("messages.json", [{"messages": []}], r"record 1 has 'messages' that is not a non-empty list"),
        ("no-assistant.json", [chat(("system", "S"), ("user", "U"))], r"record 1 has no assistant message"),
        ("trailing.json", [chat(("user", "U"), ("assistant", "A"), ("user", "more"))], r"record 1 ends with a user message"),
    ],
)
def test_bad_input_is_one_sentence_naming_file_and_record(tmp_path: Path, name: str, content: object, message: str) -> None:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, list) and name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in content))
    elif content is not None:
        write_json(path, content)
    with pytest.raises(UserError, match=message) as caught:
        read_records(path)
    text = str(caught.value)
    assert str(path) in text and text.count("; ") == 1 and text.endswith(".")


def test_a_template_error_names_the_record(tokenizer: Tokenizer) -> None:
    conversations = [alpaca_conversation("a", "", "b"), [Message("user", "Q"), Message("system", "S"), Message("assistant", "A")]]
    with pytest.raises(UserError, match="Record 2 cannot be formatted: The chat template refused"):
        encode_examples(conversations, tokenizer, ALPACA, 100)


def test_the_books_instruction_data_reads_and_encodes() -> None:
    from scratchlm.tokenizer.tokenizer import load_tokenizer

    conversations = read_records(shared_file("instruction-data.json"))
    assert len(conversations) == 1100 and all(len(c) == 2 for c in conversations)
    gpt2 = SHARED_DATA / "gpt2"
    tokenizer = load_tokenizer(gpt2) if (gpt2 / "encoder.json").exists() else train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    assert EOT in tokenizer.special_tokens
    train, held = split_holdout(conversations, 0.1, seed=0)
    # A context of 64 tokens is short for some of these records, so the counts say something.
    examples, counts = encode_examples(train, tokenizer, ALPACA, max_length=64)
    print(f"instruction-data.json with the {'GPT-2' if tokenizer.vocab_size > 50000 else 'test'} tokenizer, max_length 64: {describe(counts)}")
    assert counts["records"] == 990 == counts["examples"] + counts["skipped_too_long"] + counts["empty_response"]
    assert describe(counts).startswith("990 records → ") and counts["prompt_truncated"] > 0
    assert all(len(e.ids) <= 64 and e.num_targets >= 1 for e in examples)
    batches = InstructBatches(examples, 8, pad_id=tokenizer.eot_id)
    x, y = batches.next_batch()
    assert x.shape[0] == 8 and x.shape[1] <= 63 and bool((y != IGNORE_INDEX).any())
