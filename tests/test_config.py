"""The config system: documented fields, TOML, --set overrides, and clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scratchlm.config import (
    describe,
    field_docs,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)
from scratchlm.errors import UserError


@dataclass
class Inner:
    n_layer: int = 2
    """Number of transformer blocks."""
    dropout: float = 0.0
    """Dropout probability."""


@dataclass
class Outer:
    name: str = "run"
    """Run name."""
    tags: list[str] = field(default_factory=list)
    """Free-form labels."""
    compile: bool = False
    """Compile the model."""
    model: Inner = field(default_factory=Inner)
    """Model settings."""


def test_field_docs_come_from_attribute_docstrings() -> None:
    assert field_docs(Inner) == {"n_layer": "Number of transformer blocks.", "dropout": "Dropout probability."}
    assert ("model.n_layer", "int", "2", "Number of transformer blocks.") in describe(Outer)


def test_toml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('name = "a"\ntags = ["x"]\n[model]\nn_layer = 4\n')
    config = load_config(Outer, path, ["model.dropout=0.1", "compile=true", "name=b c"])
    assert config == Outer(name="b c", tags=["x"], compile=True, model=Inner(n_layer=4, dropout=0.1))
    assert to_dict(config)["model"] == {"n_layer": 4, "dropout": 0.1}


def test_integer_for_float_is_accepted_but_not_the_reverse() -> None:
    assert from_dict(Inner, {"dropout": 0}).dropout == 0.0
    with pytest.raises(UserError, match="n_layer expects int"):
        from_dict(Inner, {"n_layer": 2.5})


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        ({"nmae": "x"}, "did you mean 'name'"),
        ({"model": {"n_layers": 3}}, "did you mean 'model.n_layer'"),
        ({"model": {"dropuot": 0.1}}, "did you mean 'model.dropout'"),
    ],
)
def test_unknown_key_names_the_closest(data: dict, hint: str) -> None:
    with pytest.raises(UserError, match=hint):
        from_dict(Outer, data)


def test_wrong_types_and_shapes_are_clear() -> None:
    with pytest.raises(UserError, match="compile expects bool"):
        from_dict(Outer, {"compile": "yes"})
    with pytest.raises(UserError, match="is a table"):
        from_dict(Outer, {"model": 3})
    with pytest.raises(UserError, match="key=value"):
        parse_override("model.n_layer")


def test_missing_or_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="No such config file"):
        load_config(Outer, tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(Outer, broken)
