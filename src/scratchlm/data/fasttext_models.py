"""fastText models for pipeline steps: imported with a clear error, loaded once per process.

Language ID and the quality classifier both predict with fastText. A loaded model cannot be
pickled, so a step holds its model lazily and drops it when sent to a worker process, which then
loads its own copy (once per process, from the cache below).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scratchlm.errors import UserError

INSTALL_HINT = "pip install scratchlm[data]"
_MODELS: dict[str, Any] = {}  # resolved model path -> loaded fastText model, one per process


def import_fasttext(purpose: str) -> Any:
    try:
        import fasttext
    except ImportError:
        raise UserError(f"{purpose} needs the fasttext module: run `{INSTALL_HINT}`.") from None
    return fasttext


def load_fasttext(path: Path, what: str, missing_hint: str) -> Any:
    """The fastText model at `path`, loaded once per process; `what` names it in errors."""
    key = str(path.resolve())
    model = _MODELS.get(key)
    if model is not None:
        return model
    fasttext = import_fasttext(what.capitalize())
    if not path.is_file():
        raise UserError(f"The {what} model {path} does not exist; {missing_hint}")
    try:
        model = fasttext.load_model(str(path))
    except ValueError as error:  # fastText raises ValueError on a file that is not a model
        raise UserError(f"Cannot load {path} as a fastText model ({error}); {missing_hint}") from None
    _MODELS[key] = model
    return model


def forget(path: Path) -> None:
    """Drop a cached model (after its file was rewritten)."""
    _MODELS.pop(str(path.resolve()), None)


class LazyModel:
    """Mixin for a step that predicts with a fastText model: `model` loads on first use, and
    pickling leaves it out so each worker process loads its own."""

    _model: Any = None

    def load(self) -> Any:
        raise NotImplementedError

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self.load()
        return self._model

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        return state
