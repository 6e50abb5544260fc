"""tokenscale.atomic: the one atomic writer (files and folders), and a full disk as one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from tokenscale import TokenscaleError, atomic


def test_file_is_published_whole_and_temp_removed_on_error(tmp_path):
    out = tmp_path / "sub" / "a.json"
    atomic.write_json(out, {"b": 1, "a": [1, 2]})
    assert out.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    with pytest.raises(ValueError, match="boom"):
        with atomic.atomic_output(out) as tmp:
            tmp.write_text("partial")
            raise ValueError("boom")
    assert out.read_text().startswith("{") and sorted(p.name for p in out.parent.iterdir()) == ["a.json"]


def test_stale_temp_from_a_killed_writer_is_replaced(tmp_path):
    out = tmp_path / "x.txt"
    (tmp_path / "x.txt.tmp").write_text("left by SIGKILL")
    atomic.write_text(out, "new")
    assert out.read_text() == "new" and not (tmp_path / "x.txt.tmp").exists()


def test_folder_swap_keeps_old_until_new_is_complete(tmp_path):
    out = tmp_path / "state"
    with atomic.atomic_output(out, is_dir=True) as tmp:
        (tmp / "f").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic.atomic_output(out, is_dir=True) as tmp:
            (tmp / "f").write_text("2")
            raise RuntimeError("killed")
    assert (out / "f").read_text() == "1"
    with atomic.atomic_output(out, is_dir=True) as tmp:
        (tmp / "f").write_text("3")
    assert (out / "f").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_disk_full_error_recognises_errno_only():
    assert atomic.disk_full_error(OSError(28, "No space left on device"), "/x/y") is not None
    assert atomic.disk_full_error(ValueError("bad value"), "/x/y") is None


def _in_full_tmpfs(code: str, size: str = "64k") -> subprocess.CompletedProcess:
    """Run python ``code`` with ``FULL`` = a fresh tmpfs of ``size`` (private mount namespace, needs root)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    script = f"d=$(mktemp -d) && mount -t tmpfs -o size={size} tmpfs \"$d\" && FULL=\"$d\" {sys.executable} -c \"$0\""
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, textwrap.dedent(code)],
                       capture_output=True, text=True, timeout=120)
    if "mount" in p.stderr and ("permission denied" in p.stderr.lower() or "not permitted" in p.stderr.lower()):
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    if "unshare failed" in p.stderr or "unshare:" in p.stderr:
        pytest.skip(f"cannot unshare the mount namespace here: {p.stderr.strip()}")
    return p


def test_full_disk_is_one_line_and_leaves_no_temp():
    p = _in_full_tmpfs("""
        import os
        from pathlib import Path
        from tokenscale import TokenscaleError, atomic
        out = Path(os.environ["FULL"]) / "big.txt"
        try:
            atomic.write_text(out, "x" * 10**6)
        except TokenscaleError as e:
            print("ERR", e)
        print("LEFT", sorted(os.listdir(os.environ["FULL"])))
    """)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("ERR ") and lines[0].endswith("big.txt: no space left on device (while writing it; "
                                                               "free space and rerun)"), lines
    assert lines[1] == "LEFT []"


def test_full_disk_while_saving_a_figure_is_one_line():
    """analyze used to end in a 53-line PIL traceback on a full disk."""
    p = _in_full_tmpfs("""
        import os
        from pathlib import Path
        from matplotlib.figure import Figure
        from tokenscale import TokenscaleError
        from tokenscale.plotting import save_figure
        fig = Figure(figsize=(12, 12))
        ax = fig.add_subplot()
        ax.imshow(__import__("numpy").random.default_rng(0).random((600, 600)))
        try:
            save_figure(fig, Path(os.environ["FULL"]), "fig01_noise")
        except TokenscaleError as e:
            print("ERR", e)
        print("LEFT", sorted(os.listdir(os.environ["FULL"])))
    """)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("ERR ") and "fig01_noise.png: no space left on device" in lines[0], lines
    assert lines[1] == "LEFT []"


def test_error_type_is_tokenscale_error():
    assert issubclass(type(atomic.disk_full_error(OSError(122, "Disk quota exceeded"), "/q")), TokenscaleError)
