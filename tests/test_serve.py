"""`scratchlm serve` through OpenAI's own client, raw HTTP and a headless Chromium.

A tiny random model is saved as a checkpoint and served in-process (uvicorn on a thread, a free
port). Every answer is checked against the engine alone, one request at a time (batch size 1):
whole or streamed, one client or eight at once, the text must be the same. Load is made real
by slowing each forward pass (`Throttle`), so requests overlap as they would on a large model:
a full queue must answer 503 at once, and a client that leaves must free its row.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import synthetic_text

SERVE_EXTRA = "the server needs the serve extra, and its tests OpenAI's client: pip install 'scratchlm[dev]'"
pytest.importorskip("fastapi", reason=SERVE_EXTRA)
uvicorn = pytest.importorskip("uvicorn", reason=SERVE_EXTRA)
openai = pytest.importorskip("openai", reason=SERVE_EXTRA)

from scratchlm.checkpoints import load_model
from scratchlm.errors import UserError
from scratchlm.generate.chat import ChatFormat, Message
from scratchlm.generate.engine import Engine, Generation, Request
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.model.gpt import GPT, GPTConfig
from scratchlm.serve.app import create_app
from scratchlm.serve.command import serve_command
from scratchlm.serve.server import bind, url_of
from scratchlm.tokenizer.tokenizer import Tokenizer
from scratchlm.tokenizer.train import TokenizerTrainConfig, train_from_texts
from scratchlm.train.checkpoint import save_checkpoint

torch.set_num_threads(1)

NAME = "tiny"
GREEDY = SamplingConfig(temperature=0.0)
CONTEXT = 128
# A plain-text template: the chat path goes through the checkpoint's template like a tuned model's.
TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"


class Throttle:
    """Makes every forward pass of a model take `delay` seconds longer, as a big model's would."""

    def __init__(self, model: GPT) -> None:
        self.delay = 0.0
        forward = model.forward

        def slow(*args: Any, **kwargs: Any) -> Any:
            if self.delay:
                time.sleep(self.delay)
            return forward(*args, **kwargs)

        model.forward = slow  # type: ignore[method-assign]

    @contextmanager
    def __call__(self, delay: float) -> Iterator[None]:
        self.delay = delay
        try:
            yield
        finally:
            self.delay = 0.0


@dataclass
class Served:
    model: GPT
    tokenizer: Tokenizer
    chat: ChatFormat
    throttle: Throttle
    checkpoint: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    tokenizer = train_from_texts([synthetic_text(0)], TokenizerTrainConfig(vocab_size=300, workers=1))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=CONTEXT, n_layer=2, n_head=2, n_embd=32))
    # Large weights: peaked logits, so greedy's argmax never hangs on float noise between batch layouts.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator) + (1 if name.endswith("weight") and p.dim() == 1 else 0))
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("serve") / "run", 1, model, tokenizer, meta={"tokens_seen": 0, "chat_template": TEMPLATE})
    model, tokenizer, meta = load_model(checkpoint)
    return Served(model, tokenizer, ChatFormat(tokenizer, meta["chat_template"]), Throttle(model), checkpoint)


@dataclass
class Server:
    url: str
    app: Any

    @property
    def worker(self) -> Any:
        return self.app.state.worker

    def client(self, api_key: str = "unused") -> Any:
        return openai.OpenAI(base_url=self.url + "v1", api_key=api_key, max_retries=0, timeout=60)


@contextmanager
def serving(served: Served, **options: Any) -> Iterator[Server]:
    """The app on a free port of 127.0.0.1, uvicorn on a thread; its log goes to caplog (no log_config)."""
    app = create_app(served.model, served.tokenizer, model_name=NAME, chat_template=TEMPLATE, **options)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", ws="none", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield Server(url_of(sock), app)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture(scope="module")
def main(served: Served) -> Iterator[Server]:
    with serving(served) as server:
        yield server


def alone(served: Served, prompt: list[int], max_new: int, stop_ids: tuple[int, ...], sampling: SamplingConfig = GREEDY, seed: int | None = None) -> Generation:
    """The reference: the engine with one request and a batch of one."""
    [generation] = Engine(served.model, served.tokenizer, max_batch_size=1).run([Request(prompt, max_new, sampling, seed, stop_ids)])
    return generation


def text_prompt(served: Served, text: str, max_new: int, sampling: SamplingConfig = GREEDY, seed: int | None = None) -> Generation:
    return alone(served, served.tokenizer.encode_ordinary(text), max_new, (served.tokenizer.eot_id,), sampling, seed)


def chat_prompt(served: Served, messages: list[dict[str, str]], max_new: int) -> Generation:
    ids = served.chat.encode([Message(m["role"], m["content"]) for m in messages])
    return alone(served, ids, max_new, served.chat.stop_ids)


def post(url: str, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict[str, Any], Any]:
    """Status, JSON body and headers of a raw POST (no client-side checks in the way)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), error.headers


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def assert_openai_error(body: dict[str, Any]) -> dict[str, Any]:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "\n" not in error["message"] and error["message"].endswith("."), error["message"]
    return error


def wait_until(condition: Any, timeout: float) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.005)
    return time.monotonic() - started


# ---- the API through OpenAI's client ----------------------------------------------------------


def test_health_models_and_the_page_route(main: Server) -> None:
    status, text = get(main.url + "health")
    assert status == 200 and json.loads(text) == {"status": "ok", "model": NAME, "context_length": CONTEXT, "auth": False, "running": 0, "waiting": 0}
    client = main.client()
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert missing.value.code == "model_not_found"
    with urllib.request.urlopen(main.url, timeout=30) as response:
        page = response.read().decode()
        assert "connect-src 'self'" in response.headers["Content-Security-Policy"]
    assert '<textarea id="message"' in page and "/v1/chat/completions" in page
    # Self-contained: nothing to load from anywhere else.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    status, text = get(main.url + "v1/nothing")
    assert status == 404 and assert_openai_error(json.loads(text))["code"] == "unknown_url"


def test_completions_and_chat_whole_and_streamed_equal_the_engine(main: Server, served: Served) -> None:
    client = main.client()
    prompt = "the word"
    want = text_prompt(served, prompt, 20)
    whole = client.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0)
    assert whole.object == "text_completion" and whole.model == NAME and whole.id.startswith("cmpl-")
    assert whole.choices[0].text == want.text and whole.choices[0].finish_reason == want.finish_reason
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(want.prompt), len(want.tokens))
    assert whole.usage.total_tokens == len(want.prompt) + len(want.tokens)
    chunks = list(client.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert "".join(texts) == want.text and len(texts) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [want.finish_reason]
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.tokens)
    # Token ids as the prompt: the same answer.
    assert client.completions.create(model=NAME, prompt=list(want.prompt), max_tokens=20, temperature=0).choices[0].text == want.text

    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "the first word"}]
    want = chat_prompt(served, messages, 20)
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=20, temperature=0)  # type: ignore[arg-type]
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == want.text and whole.choices[0].finish_reason == want.finish_reason
    assert whole.usage.prompt_tokens == len(want.prompt)
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=20, temperature=0, stream=True))  # type: ignore[arg-type]
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(texts) == want.text and len(texts) > 1
    assert chunks[-1].choices[0].finish_reason == want.finish_reason and not chunks[-1].choices[0].delta.content
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_sampling_settings_stop_strings_and_defaults_reach_the_engine(main: Server, served: Served) -> None:
    client = main.client()
    prompt = "Some people"
    greedy = text_prompt(served, prompt, 24)
    stop = greedy.text[len(greedy.text) // 2 :][:2]
    cut = client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "never appears"])
    assert cut.choices[0].text == greedy.text[: greedy.text.index(stop)] and cut.choices[0].finish_reason == "stop"
    # No temperature: OpenAI's default of 1; a seed makes the sample the engine's own with that seed.
    sampled = text_prompt(served, prompt, 24, SamplingConfig(temperature=1.0), seed=7)
    for _ in range(2):
        assert client.completions.create(model=NAME, prompt=prompt, max_tokens=24, seed=7).choices[0].text == sampled.text
    # Extensions go in the body: top_k=1 at temperature 1 is greedy.
    assert client.completions.create(model=NAME, prompt=prompt, max_tokens=24, extra_body={"top_k": 1, "repetition_penalty": 1.0}).choices[0].text == greedy.text
    # No max_tokens: 256, or what the context leaves.
    longest = text_prompt(served, prompt, CONTEXT - len(greedy.prompt))
    default = client.completions.create(model=NAME, prompt=prompt, temperature=0)
    assert default.usage.completion_tokens == len(longest.tokens) and default.choices[0].text == longest.text


LONG = "the word and " * 60
VALIDATION_CASES = [
    # (endpoint, body, status, param, code)
    ("completions", b'{"prompt": "x",', 400, None, None),
    ("completions", b"[1, 2]", 400, None, None),
    ("completions", {}, 400, "prompt", None),
    ("completions", {"prompt": 5}, 400, "prompt", None),
    ("completions", {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens", None),
    ("completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens", None),
    ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -5}, 400, "max_completion_tokens", None),
    ("completions", {"prompt": "x", "temperature": -0.1}, 400, "temperature", None),
    ("completions", {"prompt": "x", "temperature": 2.5}, 400, "temperature", None),
    ("completions", b'{"prompt": "x", "temperature": NaN}', 400, "temperature", None),
    ("completions", {"prompt": "x", "top_p": 0}, 400, "top_p", None),
    ("completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p", None),
    ("completions", {"prompt": "x", "top_k": -1}, 400, "top_k", None),
    ("completions", {"prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty", None),
    ("completions", {"prompt": "x", "n": 2}, 400, "n", None),
    ("completions", {"prompt": "x", "stop": [1]}, 400, "stop", None),
    ("completions", {"prompt": "x", "seed": 2**70}, 400, "seed", None),
    ("completions", {"prompt": [1, 2, 99999]}, 400, "prompt", None),
    ("completions", {"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
    ("completions", {"prompt": LONG}, 400, "prompt", "context_length_exceeded"),
    ("chat/completions", {"messages": [{"role": "user", "content": LONG}]}, 400, "messages", "context_length_exceeded"),
    ("chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages.[0].role", None),
    ("chat/completions", {"messages": [{"role": "user"}]}, 400, "messages.[0].content", None),
    ("chat/completions", {"messages": []}, 400, "messages", None),
    ("chat/completions", {"messages": "hello"}, 400, "messages", None),
]


@pytest.mark.parametrize(("endpoint", "body", "status", "param", "code"), VALIDATION_CASES)
def test_bad_requests_get_openai_errors_and_no_traceback(main: Server, endpoint: str, body: Any, status: int, param: str | None, code: str | None, caplog: pytest.LogCaptureFixture) -> None:
    got, response, _ = post(main.url + "v1/" + endpoint, body)
    error = assert_openai_error(response)
    assert (got, error["type"], error["param"], error["code"]) == (status, "invalid_request_error", param, code), error
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_client_errors_through_openai_client_and_without_content_type(main: Server) -> None:
    client = main.client()
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=NAME, prompt="x", temperature=3)
    assert bad.value.param == "temperature" and "between 0" in bad.value.message
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": LONG}])
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    # curl -d without -H: the body is not read as JSON, and the error says how to send it.
    status, body, _ = post(main.url + "v1/completions", b'{"prompt": "x"}', headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and "Content-Type: application/json" in assert_openai_error(body)["message"]


def test_api_key_guards_v1_only(served: Served) -> None:
    with serving(served, api_key="sekret") as server:
        with pytest.raises(openai.AuthenticationError) as wrong:
            server.client("wrong").models.list()
        assert wrong.value.code == "invalid_api_key"
        # No key, or a malformed body without a key: 401 either way, before the body is looked at.
        for body in ({"prompt": "x"}, b"not json"):
            status, response, headers = post(server.url + "v1/completions", body)
            assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
            assert "Authorization: Bearer" in assert_openai_error(response)["message"]
        assert json.loads(get(server.url + "health")[1])["auth"] is True
        assert get(server.url)[0] == 200
        client = server.client("sekret")
        assert client.models.list().data[0].id == NAME
        assert client.completions.create(model=NAME, prompt="x", max_tokens=3).usage.completion_tokens >= 1


# ---- concurrency, back-pressure, disconnects, failures ---------------------------------------


def test_eight_concurrent_streams_are_batched_and_each_gets_its_own_answer(main: Server, served: Served) -> None:
    prompts = ["the", "Some people will", "water than", "first who may down side", "page", "number sound no", "how said an each she which do", "time"]
    # Half through completions, half through chat; each answer compared to its prompt alone.
    conversations = [[{"role": "user", "content": p}] for p in prompts[4:]]
    want = [text_prompt(served, p, 24).text for p in prompts[:4]] + [chat_prompt(served, c, 24).text for c in conversations]
    got: list[str | None] = [None] * 8
    peak = 0
    barrier = threading.Barrier(8)

    def ask(i: int) -> None:
        client = main.client()
        barrier.wait()
        if i < 4:
            chunks = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=24, temperature=0, stream=True)
            got[i] = "".join(c.choices[0].text for c in chunks)
        else:
            chunks = client.chat.completions.create(model=NAME, messages=conversations[i - 4], max_tokens=24, temperature=0, stream=True)  # type: ignore[arg-type]
            got[i] = "".join(c.choices[0].delta.content or "" for c in chunks)

    with served.throttle(0.01):
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, main.worker.running)
            time.sleep(0.005)
    assert got == want
    assert peak > 1  # they shared the batch


def test_a_full_queue_answers_503_with_retry_after_at_once_and_accepted_requests_complete(served: Served) -> None:
    prompts = ["the", "Some people", "water", "page number"]
    want = [text_prompt(served, p, 8).text for p in prompts]
    results: list[tuple[int, dict[str, Any], Any, float, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(64)
    with serving(served, max_batch_size=2, queue_size=16) as server, served.throttle(0.02):

        def ask(i: int) -> None:
            barrier.wait()
            started = time.monotonic()
            status, body, headers = post(server.url + "v1/completions", {"prompt": prompts[i % 4], "max_tokens": 8, "temperature": 0}, timeout=60)
            with lock:
                results.append((status, body, headers, time.monotonic() - started, i))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    assert len(results) == 64  # nobody hung
    refused = [r for r in results if r[0] == 503]
    accepted = [r for r in results if r[0] == 200]
    assert len(refused) + len(accepted) == 64 and refused
    # A refusal means 2 + 16 were in flight then, and every one of those completes.
    assert len(accepted) >= 18
    for status, body, headers, seconds, i in refused:
        assert headers["Retry-After"] == "1" and assert_openai_error(body)["code"] == "server_busy"
    for status, body, headers, seconds, i in accepted:
        assert body["choices"][0]["text"] == want[i % 4]
    # Refused at once: well before the accepted ones' ~1.5 s of generation is over.
    assert max(r[3] for r in refused) < max(r[3] for r in accepted)
    assert sorted(r[3] for r in refused)[len(refused) // 2] < 1.0


def raw_request(url: str, body: dict[str, Any]) -> socket.socket:
    """A POST sent over a bare socket, so the test can hang up whenever it likes."""
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()  # type: ignore[union-attr]
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_client_that_leaves_frees_its_row(served: Served) -> None:
    # The prompt with the longest greedy answer (the random model ends with <|endoftext|> at some
    # point), slowed so that the whole answer would take 3 s: a freed row shows within a few steps.
    answers = {p: text_prompt(served, p, 120) for p in ["said", "first", "on", "and", "the", "page"]}
    prompt = max(answers, key=lambda p: len(answers[p].tokens))
    steps = len(answers[prompt].tokens)
    assert steps >= 30
    with serving(served, max_batch_size=1) as server, served.throttle(3.0 / steps):
        worker = server.worker
        for stream in (True, False):
            sock = raw_request(server.url, {"prompt": prompt, "max_tokens": 120, "temperature": 0, "stream": stream})
            wait_until(lambda: worker.running == 1, 10)
            if stream:
                received = b""
                while received.count(b"data: ") < 3:  # well into the answer
                    received += sock.recv(65536)
            sock.close()
            assert wait_until(lambda: worker.running == 0 and worker.waiting == 0, 1.0) < 1.0
        completion = server.client().completions.create(model=NAME, prompt=prompt, max_tokens=5, temperature=0)
        assert completion.choices[0].text == text_prompt(served, prompt, 5).text


def test_an_engine_failure_fails_its_requests_and_the_server_goes_on(main: Server, served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    client = main.client()

    def broken() -> None:
        raise RuntimeError("CUDA error: device-side assert triggered\nmore detail")

    monkeypatch.setattr(main.worker.engine, "step", broken)
    with pytest.raises(openai.InternalServerError) as failed:
        client.completions.create(model=NAME, prompt="the", max_tokens=5)
    assert failed.value.status_code == 500 and failed.value.code == "engine_error"
    # Mid-stream, the status is already 200: the stream ends with an error event instead.
    monkeypatch.setattr(main.worker.engine, "step", broken)
    with pytest.raises(openai.APIError) as streamed:
        list(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}], stream=True))
    assert streamed.value.code == "engine_error"
    failures = [r for r in caplog.records if "the engine failed" in r.getMessage()]
    assert len(failures) == 2 and all("\n" not in r.getMessage() and "RuntimeError" in r.getMessage() for r in failures)
    assert client.completions.create(model=NAME, prompt="the", max_tokens=5, temperature=0).choices[0].text == text_prompt(served, "the", 5).text


# ---- the chat page in a real browser -----------------------------------------------------------


class DevTools:
    """Chromium, headless, driven over the DevTools protocol on a pipe (--remote-debugging-pipe):
    JSON messages ending in NUL, written to its fd 3 and read from its fd 4; no websocket needed."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()
        # Above 10, so that placing them at 3 and 4 in the child cannot overwrite one another.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        os.close(to_browser)
        os.close(from_browser)
        flags = f"--headless --no-sandbox --disable-gpu --no-first-run --remote-debugging-pipe --user-data-dir={profile}"
        self.process = subprocess.Popen(
            ["bash", "-c", f'exec "$0" {flags} about:blank 3<&{high[0]} 4>&{high[1]} {high[0]}<&- {high[1]}>&-', chromium],
            pass_fds=high,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in high:
            os.close(fd)
        self._buffer = b""
        self._id = 0

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._in], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method}")
                chunk = os.read(self._in, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # anything else is an event
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> str:
        target = self.call("Target.createTarget", url=url)["targetId"]
        return self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
        return None if "exceptionDetails" in result else result["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(session, f"!!({expression})"):
            assert time.monotonic() < deadline, f"the page never got to: {expression}"
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._out)
        os.close(self._in)


def test_the_chat_page_streams_an_answer_into_the_page(main: Server, served: Served, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the chat page is tested in it, headless")
    # A message the random model answers at length, so that the answer has room to stream.
    answers = {m: chat_prompt(served, [{"role": "user", "content": m}], 16) for m in ["said", "on", "hello", "first"]}
    message = max(answers, key=lambda m: len(answers[m].tokens))
    want = answers[message].text
    assert len(answers[message].tokens) >= 10
    browser = DevTools(chromium, tmp_path / "profile")
    try:
        page = browser.open(main.url)
        browser.wait_for(page, "document.getElementById('status').textContent.startsWith('Ready')")
        assert browser.evaluate(page, "document.getElementById('model').textContent") == NAME
        assert browser.evaluate(page, "['message', 'send', 'reset', 'temperature', 'max-tokens', 'log'].every((id) => document.getElementById(id))")
        with served.throttle(0.03):
            # Record every text the answer shows on its way, then send as a user would.
            browser.evaluate(
                page,
                """
                window.shown = [];
                new MutationObserver(() => {
                  const answers = document.querySelectorAll('.message.assistant .content');
                  if (answers.length) window.shown.push(answers[answers.length - 1].textContent);
                }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
                document.getElementById('temperature').value = '0';
                document.getElementById('max-tokens').value = '16';
                document.getElementById('message').value = MESSAGE;
                document.getElementById('send').click();
                """.replace("MESSAGE", json.dumps(message)),
            )
            browser.wait_for(page, "document.querySelector('.message.assistant') && document.getElementById('log').getAttribute('aria-busy') === 'false'")
        answer = browser.evaluate(page, "document.querySelector('.message.assistant .content').textContent")
        shown = browser.evaluate(page, "window.shown")
        assert answer == want
        # Streamed: the answer grew in the page through several partial texts before the last.
        partial = {text for text in shown if text and text != want}
        assert len(partial) >= 2 and all(want.startswith(text) for text in partial), (want, shown)
        # An error from the API shows up in the conversation.
        browser.evaluate(page, "document.getElementById('max-tokens').value = '0'; document.getElementById('message').value = 'again'; document.getElementById('send').click();")
        browser.wait_for(page, "document.querySelector('.message.error')")
        assert browser.evaluate(page, "document.querySelector('.message.error .content').textContent") == "max_tokens is 0; it must be at least 1."
    finally:
        browser.close()


# ---- the command -----------------------------------------------------------------------------


def test_serve_command_prints_its_url_reads_the_key_from_the_environment_and_stops_on_ctrl_c(served: Served) -> None:
    # serve_command as the root command of cli.main: its error and Ctrl-C handling included.
    shim = "import typer, scratchlm.cli as cli; from scratchlm.serve.command import serve_command; cli.app = typer.Typer(); cli.app.command()(serve_command); cli.main()"
    env = dict(os.environ, SCRATCHLM_API_KEY="from-env", OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    process = subprocess.Popen([sys.executable, "-c", shim, str(served.checkpoint), "--port", "0", "--device", "cpu", "--model-name", "cli-model"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    killer = threading.Timer(60, process.kill)
    killer.start()
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert found, line + process.stderr.read()  # type: ignore[union-attr]
        url = found.group(1)
        assert "cli-model" in line and "key required" in line
        assert get(url + "health")[0] == 200
        assert get(url + "v1/models")[0] == 401
        status, text = get(url + "v1/models", {"Authorization": "Bearer from-env"})
        assert status == 200 and json.loads(text)["data"][0]["id"] == "cli-model"
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
    finally:
        killer.cancel()
        process.kill()
    errors = process.stderr.read()  # type: ignore[union-attr]
    assert code in (0, 130), errors
    assert "Traceback" not in errors


def test_serve_command_refuses_a_port_in_use_and_says_how_to_install_its_extra(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = bind("127.0.0.1", 0)
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=rf"^Port {port} on 127\.0\.0\.1 is in use; .*--port\.$"):
            serve_command(served.checkpoint, port=port)
    finally:
        taken.close()
    for bad, setting in (({"max_batch_size": 0}, "--max-batch-size"), ({"queue_size": -1}, "--queue-size"), ({"port": 70000}, "--port")):
        with pytest.raises(UserError, match=setting):
            serve_command(served.checkpoint, **bad)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    with pytest.raises(UserError, match=re.escape("pip install 'scratchlm[serve]'")):
        serve_command(served.checkpoint)
