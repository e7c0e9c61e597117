"""Typed configuration: dataclasses documented once, filled from TOML files and `--set` overrides.

Each setting is a dataclass field followed by a docstring:

    @dataclass
    class TokenizerTrainConfig:
        vocab_size: int = 8192
        \"\"\"Total vocabulary: 256 byte tokens + merges + special tokens.\"\"\"

That docstring is the `--help` text, the documentation of the TOML key, and the description in
`describe()`; nothing is written twice. Nested dataclasses are TOML tables (`[model]`) and
dotted keys for `--set model.n_layer=4`. An unknown key is an error that names the closest
valid key, and a value of the wrong type is an error that names the expected type.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import sys
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from scratchlm.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib joined the standard library in 3.11; tomli is the same parser, released on its own
    import tomli as tomllib

C = TypeVar("C")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` (from TOML or `--set`) against the field type, converting where lossless."""
    origin = typing.get_origin(annotation)
    wrong = UserError(f"Setting {key} expects {_type_name(annotation)}, got {value!r}; fix the value in the config file or --set.")
    if origin in (typing.Union, types.UnionType):
        arguments = typing.get_args(annotation)
        if value is None and type(None) in arguments:
            return None
        for argument in arguments:
            if argument is type(None):
                continue
            try:
                return _coerce(value, argument, key)
            except UserError:
                continue
        raise wrong
    if origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
        raise wrong
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise wrong
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_coerce(v, item_type, key) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise wrong
    if annotation is str:
        if isinstance(value, str):
            return value
        raise wrong
    if annotation is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise wrong
    raise wrong


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every valid dotted key of a config class, nested tables included."""
    keys: list[str] = []
    for name, annotation in _hints(cls).items():
        if name.startswith("_"):
            continue
        if _is_dataclass_type(annotation):
            keys.extend(all_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown_key(cls: type, key: str, root: type) -> UserError:
    candidates = all_keys(root)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close:
        # Typos often sit only in the last part of a dotted key.
        last = key.rsplit(".", 1)[-1]
        by_last = {k.rsplit(".", 1)[-1]: k for k in candidates}
        close = [by_last[m] for m in difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6)]
    hint = f"did you mean {close[0]!r}?" if close else "see --help for the settings."
    return UserError(f"Unknown setting {key!r} for {cls.__name__}; {hint}")


def from_dict(cls: type[C], data: dict[str, Any], _prefix: str = "", _root: type | None = None) -> C:
    """Build a config from a (nested) dict, rejecting unknown keys and wrong types."""
    root = _root or cls
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        full_key = f"{_prefix}{key}"
        if key not in hints or key.startswith("_"):
            raise _unknown_key(cls, full_key, root)
        annotation = hints[key]
        if _is_dataclass_type(annotation):
            if not isinstance(value, dict):
                raise UserError(f"Setting {full_key} is a table of settings, not a value; use [{full_key}] in TOML or --set {full_key}.KEY=VALUE.")
            values[key] = from_dict(annotation, value, f"{full_key}.", root)
        else:
            values[key] = _coerce(value, annotation, full_key)
    try:
        config = cls(**values)
    except (TypeError, ValueError) as error:
        raise UserError(f"Invalid {cls.__name__}: {error}") from None
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain data (for TOML/JSON and run records); paths become strings."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` → (["a", "b"], value), the value read as a TOML value, else as a plain string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"Override {text!r} is not of the form key=value (e.g. --set model.n_layer=4).")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set` overrides on top of a nested dict (the TOML file), returning a new dict."""
    merged = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"Override {text!r} goes inside {part!r}, which is a value, not a table.")
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No such config file: {path}; pass a TOML file (see configs/).")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML: {error}.") from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> C:
    """defaults ← `base` ← TOML file ← `--set` overrides, validated into `cls`."""
    data = _deep_copy(base or {})
    if path is not None:
        data = deep_update(data, read_toml(path))
    return from_dict(cls, merge_overrides(data, overrides or []))


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = _deep_copy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, documentation) for every setting, nested tables included."""
    rows: list[tuple[str, str, str, str]] = []
    docs = field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        annotation = hints[f.name]
        if _is_dataclass_type(annotation):
            rows.extend(describe(annotation, f"{prefix}{f.name}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((f"{prefix}{f.name}", _type_name(annotation), default, docs.get(f.name, "")))
    return rows


PRESETS_DIR = Path(__file__).parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def resolve_config_file(name_or_path: str | Path) -> Path:
    """A TOML file path, or the name of a preset shipped with scratchlm (`tiny`, `gpt2-124m`, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{name_or_path}.toml"
    if preset.is_file():
        return preset
    raise UserError(f"No config file or preset named {str(name_or_path)!r}; pass a TOML path or one of: {', '.join(preset_names())}.")


def settings_help(cls: type) -> str:
    """Every setting of a config class as help text: key, type, default and documentation."""
    from rich.markup import escape

    paragraphs = [f"[bold]Settings[/bold] (TOML keys, or --set KEY=VALUE): {cls.__name__}"]
    for key, type_name, default, doc in describe(cls):
        paragraphs.append(escape(f"{key} ({type_name}, default {default}): {doc}"))
    return "\n\n".join(paragraphs)
