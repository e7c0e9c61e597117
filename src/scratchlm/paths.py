"""Output directories, checked before a stage starts work.

A stage that writes its result at the end (a tokenizer, prepared documents, a training run)
checks its output path first, so a path that is a file, lies under a file or is not writable
fails in the first second with one sentence, not with a traceback after an hour of work.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from scratchlm.errors import UserError


def check_output_location(path: Path, what: str) -> None:
    """Raise a `UserError` unless `path` is a writable directory or can be created as one.

    `what` names the setting the path came from (e.g. "--output", "train.out_dir"), so the
    message points at what to change.
    """
    path = Path(path)
    # A relative path's ancestors end at ".", which exists, so they stay as the user wrote them.
    for candidate in (path, *path.parents):
        try:
            mode = candidate.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            # Not there yet (or under a file, which a later candidate reports); look one level up.
            continue
        except OSError as error:
            raise UserError(f"Cannot use {what} {path} ({error.strerror or error}); choose another path.") from None
        if not stat.S_ISDIR(mode):
            if candidate == path:
                raise UserError(f"{what} {path} is a file, not a directory; choose another path.")
            raise UserError(f"{what} {path} lies under {candidate}, which is a file, not a directory; choose another path.")
        # Creating entries in a directory needs both write and search permission.
        if not os.access(candidate, os.W_OK | os.X_OK):
            if candidate == path:
                raise UserError(f"{what} {path} is not writable; choose another path or make it writable.")
            raise UserError(f"{what} {path} cannot be created because {candidate} is not writable; choose another path or make it writable.")
        return


def make_directory(path: Path, what: str) -> Path:
    """Create `path` (and its parents) as a directory after `check_output_location`; returns it."""
    path = Path(path)
    check_output_location(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        # What the check cannot foresee: a read-only file system, a broken link, a full disk.
        raise UserError(f"Cannot create {what} {path} ({error.strerror or error}); choose another path.") from None
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
