import pytest

from psta.atomic import atomic_dir, atomic_path, write_text_atomic


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


def test_atomic_dir_swaps_whole_tree(tmp_path):
    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise ValueError("bad input")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "new"):
            raise OSError("disk full")
    assert not (tmp_path / "new").exists()
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_ordinary_permissions(tmp_path):
    import os
    import stat

    write_text_atomic(tmp_path / "f", "x")
    with atomic_dir(tmp_path / "d"):
        pass
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask


def test_sweep_removes_only_temporaries_of_dead_writers(tmp_path):
    import subprocess
    import sys

    from psta.atomic import sweep_stale

    out = tmp_path / "cache"
    out.mkdir()
    (out / "shard.bin").write_bytes(b"keep")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale_dir = tmp_path / f".cache.{dead}.abcd1234.tmp"
    stale_dir.mkdir()
    (stale_dir / "shard-00000.bin").write_bytes(b"x" * 1000)
    legacy = tmp_path / ".cache.zz_9abcd.old"  # written before temporaries carried a pid
    legacy.mkdir()
    inner = out / f".state.pt.{dead}.qwerty12.tmp"
    inner.write_bytes(b"y" * 10)
    other = tmp_path / f".index.{dead}.abcd1234.tmp"  # another output's: not this sweep's
    other.write_bytes(b"")
    with atomic_path(out / "live.pt") as live:  # this process is alive: its temporary stays
        live.write_bytes(b"z")
        removed = dict(sweep_stale(out))
        assert live.exists()
    assert removed == {stale_dir: 1000, legacy: 0, inner: 10}
    assert not stale_dir.exists() and not legacy.exists() and not inner.exists()
    assert other.exists() and (out / "shard.bin").read_bytes() == b"keep"
