"""`loudfacts.atomic`: a reader sees the old file or the whole new one, never a part."""

import json
import os
import stat

import numpy as np
import pytest

from loudfacts.atomic import atomic_path, write_json, write_text


def test_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json(path, {"a": 1}, indent=1)
    write_json(path, {"b": [1, 2]})
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_suffix_lets_writers_that_add_one_write_the_temporary_itself(tmp_path):
    path = tmp_path / "grid.npz"
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, x=np.arange(3))  # savez would write tmp + ".npz" without the suffix
    assert np.load(path)["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["grid.npz"]


def test_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "x", fsync=True)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_permissions_follow_the_umask_at_write_time_not_at_import(tmp_path):
    old = os.umask(0o077)  # a process that tightens its umask after importing the package
    try:
        write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
