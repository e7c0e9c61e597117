"""Output directories: every unusable path is one clear sentence before any work, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scratchlm.errors import UserError
from scratchlm.paths import check_output_location, make_directory


def test_new_and_existing_directories_are_fine(tmp_path: Path) -> None:
    check_output_location(tmp_path, "--output")
    check_output_location(tmp_path / "a" / "b", "--output")
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert make_directory(tmp_path / "a" / "b", "--output") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    make_directory(tmp_path / "a" / "b", "--output")  # already there: fine


def test_relative_paths_are_checked_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    make_directory(Path("new"), "--output")
    assert (tmp_path / "new").is_dir()
    with pytest.raises(UserError, match="lies under"):
        check_output_location(Path("file/sub"), "--output")


def test_a_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    for function in (check_output_location, make_directory):
        with pytest.raises(UserError, match=r"^train\.out_dir .*file\.txt is a file, not a directory; choose another path\.$"):
            function(tmp_path / "file.txt", "train.out_dir")
    assert (tmp_path / "file.txt").read_text() == "x"


def test_a_path_under_a_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match=r"^--output .*file\.txt/a/b lies under .*file\.txt, which is a file, not a directory; choose another path\.$"):
        make_directory(tmp_path / "file.txt" / "a" / "b", "--output")


def test_an_unusable_name_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="^Cannot use --output .*File name too long"):
        make_directory(tmp_path / ("x" * 300), "--output")


def test_a_failed_mkdir_is_a_user_error(tmp_path: Path) -> None:
    # A dangling link passes the checks (nothing is there to look at) but mkdir cannot replace it.
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=r"^Cannot create --output .*link \(File exists\); choose another path\.$"):
        make_directory(tmp_path / "link", "--output")


def test_a_directory_without_write_permission(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root, which may write to any directory whatever its permissions")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"^--output .*locked is not writable; choose another path or make it writable\.$"):
            make_directory(locked, "--output")
        with pytest.raises(UserError, match=r"^--output .*locked/new/deeper cannot be created because .*locked is not writable"):
            make_directory(locked / "new" / "deeper", "--output")
    finally:
        locked.chmod(0o755)
