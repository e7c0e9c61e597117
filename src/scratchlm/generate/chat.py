"""Conversations to prompts: a checkpoint's chat template, or plain continuation without one.

A chat template is a Jinja template in Hugging Face's convention (`messages`, each a dict with
`role` and `content`; `add_generation_prompt`; `bos_token`, `eos_token`), kept in a checkpoint's
meta.json under "chat_template" by instruction tuning or by `convert from-hf`, and written to
tokenizer_config.json by `convert to-hf`. It is rendered in Jinja's sandbox: a template is data
from a checkpoint, not code to trust. Without a template the conversation is plain text: every
turn's content, one after another, and the model continues the last.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scratchlm.errors import UserError
from scratchlm.generate.engine import Engine, Generation, Request
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.tokenizer.tokenizer import EOT, Tokenizer

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str
    """"system", "user" or "assistant"."""
    content: str


class ChatFormat:
    """How a checkpoint's conversations become token ids, and which tokens end a turn."""

    def __init__(self, tokenizer: Tokenizer, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.template_source = template
        self.template = _compile(template) if template else None
        # Any special token ends a turn: <|endoftext|>, and a template's end-of-turn marker.
        self.stop_ids = tuple(sorted(tokenizer.special_tokens.values()))

    @property
    def has_template(self) -> bool:
        return self.template is not None

    def render(self, messages: list[Message]) -> str:
        """The conversation as the text the model continues (ending where the assistant speaks)."""
        return self._render(messages, [m.content for m in messages])

    def _render(self, messages: list[Message], contents: list[str]) -> str:
        for message in messages:
            if message.role not in ROLES:
                raise UserError(f"A message's role is {message.role!r}; it must be one of {', '.join(ROLES)}.")
        if self.template is None:
            return "".join(contents)
        try:
            return self.template.render(
                messages=[{"role": m.role, "content": c} for m, c in zip(messages, contents)],
                add_generation_prompt=True,
                bos_token="",
                eos_token=EOT if EOT in self.tokenizer.special_tokens else "",
            )
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - any template error is the checkpoint's, said in one line
            raise UserError(f"The checkpoint's chat template failed on this conversation ({type(error).__name__}: {error}).") from None

    def encode(self, messages: list[Message]) -> list[int]:
        """Prompt ids of a conversation. Special-token strings the template writes become their
        ids; the same strings inside a message stay text, so nobody can forge a turn by typing
        its markers. The text between special tokens is encoded whole, as the rendered string
        would be (splitting it at message boundaries would change the tokens there)."""
        if self.template is None:
            return self.tokenizer.encode_ordinary(self.render(messages))
        # Render once with stand-ins for the contents to learn which text is the template's.
        marker = f"\x00{uuid.uuid4().hex}:"
        stand_ins = [f"{marker}{i}\x00" for i in range(len(messages))]
        rendered = self._render(messages, stand_ins)
        specials = self.tokenizer.special_tokens
        special = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))) if specials else None
        ids: list[int] = []
        text = ""
        for i, part in enumerate(re.split(f"({re.escape(marker)}\\d+\x00)", rendered)):
            if i % 2:  # a stand-in: the message's own text, never a special token
                text += messages[int(part[len(marker) : -1])].content
                continue
            at = 0
            for found in special.finditer(part) if special else ():
                text += part[at : found.start()]
                ids += self.tokenizer.encode_ordinary(text) + [specials[found.group()]]
                text, at = "", found.end()
            text += part[at:]
        return ids + self.tokenizer.encode_ordinary(text)


def _raise(message: str) -> None:
    raise UserError(f"The chat template refused the conversation: {message}")


def _compile(source: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise
    try:
        return environment.from_string(source)
    except TemplateError as error:
        raise UserError(f"The checkpoint's chat template is not valid Jinja ({error}); fix meta.json's chat_template.") from None


def fit_history(chat: ChatFormat, messages: list[Message], room: int, context: int) -> tuple[list[int], int]:
    """Prompt ids for the longest recent part of a conversation that leaves `room` new tokens in
    the context, and how many earlier turns were dropped for it. A leading system message stays.
    The latest message alone too long is a UserError."""
    system = messages[:1] if messages and messages[0].role == "system" else []
    turns = messages[len(system) :]
    budget = context - min(room, context // 2)
    for dropped in range(len(turns)):
        kept = turns[dropped:]
        if dropped and kept[0].role == "assistant":
            continue  # a conversation resumes at a user's turn
        ids = chat.encode(system + kept)
        if len(ids) <= budget:
            return ids, dropped
    raise UserError(f"The last message alone is too long for the model's {context}-token context; send a shorter one.")


class ChatSession:
    """A conversation with a model: history within the context, streamed answers, slash commands."""

    COMMANDS = "/reset (forget the conversation), /temperature X, /system TEXT, /quit"

    def __init__(self, model: Any, chat: ChatFormat, sampling: SamplingConfig, max_new_tokens: int = 256, system: str = "", seed: int | None = None) -> None:
        self.model, self.chat = model, chat
        self.sampling, self.max_new_tokens, self.seed = sampling, max_new_tokens, seed
        self.system = system
        self.messages: list[Message] = []

    def command(self, line: str) -> str | None:
        """Run a slash command; the line to show, or None for /quit."""
        name, _, argument = line.strip().partition(" ")
        argument = argument.strip()
        if name == "/quit":
            return None
        if name == "/reset":
            self.messages = []
            return "(conversation forgotten)"
        if name == "/system":
            self.system = argument
            return f"(system prompt {'set' if argument else 'cleared'})"
        if name == "/temperature":
            try:
                value = float(argument)
            except ValueError:
                return f"(/temperature takes a number, e.g. /temperature 0.7; not {argument!r})"
            try:
                self.sampling = dataclasses.replace(self.sampling, temperature=value)
            except UserError as error:
                return f"({error})"
            return f"(temperature {value})"
        return f"(unknown command {name}; the commands are {self.COMMANDS})"

    def send(self, text: str, on_text: Callable[[str], None], on_note: Callable[[str], None]) -> Generation:
        """Answer a user's message, streaming the answer's text; the answer joins the history.

        Interrupted (Ctrl-C), the answer so far is kept and the KeyboardInterrupt goes on.
        """
        conversation = ([Message("system", self.system)] if self.system else []) + self.messages + [Message("user", text)]
        ids, dropped = fit_history(self.chat, conversation, self.max_new_tokens, self.model.config.block_size)
        if dropped:
            on_note(f"the {dropped} oldest message{'s' * (dropped > 1)} no longer fit the {self.model.config.block_size}-token context and were dropped")
            self.messages = self.messages[dropped:]
        engine = Engine(self.model, self.chat.tokenizer, max_batch_size=1)
        generation = engine.prepare(Request(ids, self.max_new_tokens, self.sampling, self.seed, self.chat.stop_ids))
        for note in generation.notes:
            on_note(note)
        engine.enqueue(generation)
        try:
            while not engine.idle:
                for delta in engine.step():
                    if delta.text:
                        on_text(delta.text)
        finally:
            self.messages += [Message("user", text), Message("assistant", generation.text)]
        return generation
