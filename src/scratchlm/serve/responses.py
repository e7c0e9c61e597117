"""OpenAI's response shapes: a text or chat completion, whole or as server-sent-event chunks.

A stream is `data: {chunk}\\n\\n` events ending with `data: [DONE]\\n\\n`, as OpenAI sends them;
every chunk of one answer carries the same id and creation time.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from scratchlm.generate.engine import Generation

DONE = "data: [DONE]\n\n"


def event(data: dict[str, Any]) -> str:
    """One server-sent event; compact JSON never holds a newline, which would end the event."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def usage(generation: Generation) -> dict[str, int]:
    prompt, completion = len(generation.prompt), len(generation.tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class Reply:
    """One answer's identity, shared by all its chunks."""

    chat: bool
    """A chat completion (message / delta), else a text completion (text)."""
    model: str
    id: str = field(default="", init=False)
    created: int = field(default_factory=lambda: int(time.time()), init=False)

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, generation: Generation, finish_reason: str | None) -> dict[str, Any]:
        """The non-streamed response."""
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": generation.text}
        else:
            choice["text"] = generation.text
        choice.update(logprobs=None, finish_reason=finish_reason)
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [choice], "usage": usage(generation)}

    def chunk(self, text: str | None = None, finish_reason: str | None = None, role: bool = False) -> str:
        """A stream chunk: new text, the finish reason, or (chat) the assistant's role that opens it."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return event({**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [choice]})

    def usage_chunk(self, generation: Generation) -> str:
        """The last chunk when the request set stream_options.include_usage: no choices, the counts."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return event({**self._head(kind), "choices": [], "usage": usage(generation)})
