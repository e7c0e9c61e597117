"""Request bodies of /v1/completions and /v1/chat/completions, checked before any work starts.

pydantic parses the types and the validators here check the values, so each mistake becomes
one sentence naming its field, which `validation_error` turns into OpenAI's 400 shape (the
first mistake only: one sentence, one `param`). Ranges are OpenAI's where OpenAI has one
(temperature within [0, 2]) and the engine's otherwise (`top_k`, `min_p` and
`repetition_penalty` are extensions). Fields of OpenAI's API that this server cannot honour are
refused when they ask for something (n > 1, logprobs, tools, ...) and accepted at their neutral
values, which some clients always send; fields nobody knows are ignored, as other
OpenAI-compatible servers do, so clients that add their own keep working.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from scratchlm.errors import UserError
from scratchlm.generate.chat import ROLES, Message
from scratchlm.generate.sampling import SamplingConfig
from scratchlm.serve.errors import APIError

DEFAULT_MAX_TOKENS = 256
"""New tokens when a request does not say (fewer when the context leaves fewer)."""

NEUTRAL: dict[str, tuple[Any, ...]] = {
    # OpenAI fields this server does not implement, and the values that ask for nothing.
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "suffix": ("",),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "response_format": ({"type": "text"},),
}
TORCH_SEEDS = (-(2**63), 2**64)
"""torch.Generator.manual_seed takes seeds in [-2^63, 2^64)."""


class StreamOptions(BaseModel):
    include_usage: bool = False
    """Send a last chunk with the token counts before [DONE]."""


class SharedFields(BaseModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    """The served model's name; optional here (OpenAI requires it), checked when given."""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Not implemented: refused unless neutral (see NEUTRAL).
    n: Any = None
    best_of: Any = None
    echo: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    suffix: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    response_format: Any = None

    @field_validator(*NEUTRAL)
    @classmethod
    def _neutral(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if value is None or value in NEUTRAL[name]:
            return value
        if name == "n":
            raise ValueError(f"n is {value!r}, but this server returns one choice per request; send {value!r} requests (with different seeds) instead.")
        raise ValueError(f"{name} is {value!r}, which this server does not support; leave it out.")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        if value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            return value
        raise ValueError("stop must be a string or a list of strings.")

    @field_validator("max_tokens", "max_completion_tokens", check_fields=False)
    @classmethod
    def _max_tokens(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"{info.field_name} is {value}; it must be at least 1.")
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        # Each comparison is false for NaN, so NaN fails every range check here.
        if value is not None and not 0 <= value <= 2:
            raise ValueError(f"temperature is {value}; it must be between 0 (greedy) and 2.")
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"top_p is {value}; it must be greater than 0 and at most 1.")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError(f"top_k is {value}; it must be 0 (no limit) or more.")
        return value

    @field_validator("min_p")
    @classmethod
    def _min_p(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"min_p is {value}; it must be at least 0 and less than 1.")
        return value

    @field_validator("repetition_penalty")
    @classmethod
    def _repetition_penalty(cls, value: float | None) -> float | None:
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"repetition_penalty is {value}; it must be positive (1 = off).")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not TORCH_SEEDS[0] <= value < TORCH_SEEDS[1]:
            raise ValueError(f"seed is {value}; it must be at least -2**63 and less than 2**64.")
        return value

    def sampling(self) -> SamplingConfig:
        """The engine's settings: OpenAI's defaults (temperature 1, top_p 1) where the request is silent."""
        try:
            return SamplingConfig(
                temperature=1.0 if self.temperature is None else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                top_k=self.top_k or 0,
                min_p=self.min_p or 0.0,
                repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            )
        except UserError as error:
            raise APIError(400, str(error)) from None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SharedFields):
    prompt: str | list[int]
    """Text to continue, or its token ids."""

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        # A one-prompt batch is what some clients send for one prompt.
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
            value = value[0]
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)):
            return value
        raise ValueError("prompt must be a string or a list of token ids; send one request per prompt.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value not in ROLES:
            raise ValueError(f"role is {value!r}; it must be one of {', '.join(ROLES)}.")
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        # OpenAI's content parts: text parts are joined; images and audio have no meaning here.
        if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            return "".join(p["text"] for p in value)
        if isinstance(value, str):
            return value
        raise ValueError("content must be a string or a list of text parts ({\"type\": \"text\", \"text\": ...}).")


class ChatRequest(SharedFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    """OpenAI's newer name for max_tokens; it wins when both are given."""

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise ValueError("messages is empty; send at least one message.")
        return value

    def conversation(self) -> list[Message]:
        return [Message(m.role, m.content) for m in self.messages]

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def param_name(location: Sequence[str | int]) -> str | None:
    """OpenAI's name for a field's place in the body: messages.[0].role."""
    return ".".join(f"[{part}]" if isinstance(part, int) else part for part in location) or None


def validation_error(errors: Sequence[dict[str, Any]]) -> APIError:
    """The 400 for pydantic's (FastAPI's) list of what is wrong with a body: its first entry.

    The input is never echoed back: it may be huge, or NaN, which JSON cannot carry."""
    error = errors[0]
    kind, message = error["type"], error["msg"]
    location = tuple(error["loc"])
    if location[:1] == ("body",):
        location = location[1:]
    if kind == "json_invalid":
        where = f" at character {location[0]}" if location and isinstance(location[0], int) else ""
        reason = (error.get("ctx") or {}).get("error", "JSON decode error")
        return APIError(400, f"The request body is not valid JSON ({reason}{where}).")
    if not location:
        if kind == "missing":
            return APIError(400, "The request has no body; send a JSON object with Content-Type: application/json.")
        if isinstance(error.get("input"), (bytes, str)):
            return APIError(400, "The request body was not read as JSON; send it with Content-Type: application/json.")
        return APIError(400, "The request body must be a JSON object.")
    param = param_name(location)
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param)
    if kind == "value_error":
        return APIError(400, message.removeprefix("Value error, "), param=param)
    return APIError(400, f"Invalid value for '{param}': {message[:1].lower()}{message[1:]}.", param=param)
