"""initcore.files.atomic_write: the whole new file or the old one, never a part, and no temporary left."""

import os

import pytest

from initcore import files


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, durable):
    target = tmp_path / "rows.csv"
    target.write_text("old")
    files.atomic_write(target, b"new", durable=durable)
    assert target.read_bytes() == b"new"
    assert os.stat(target).st_mode & 0o777 == 0o644  # readable by all, not mkstemp's 0600

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(target, b"newer", durable=durable)
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]  # the temporary file is gone


def test_durable_syncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    files.atomic_write(tmp_path / "a", b"x")
    assert synced == []
    files.atomic_write(tmp_path / "a", b"y", durable=True)
    assert len(synced) == 2 and (tmp_path / "a").read_bytes() == b"y"
