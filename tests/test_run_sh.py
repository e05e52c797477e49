"""run.sh's command line: a bad option fails at once, before any stage runs."""

import subprocess

import pytest

from tests.conftest import REPO


def run_sh(*args):
    return subprocess.run(["bash", "run.sh", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("seg", ["v4", "v2,deeplab"])
def test_unknown_segmentation_network_is_refused_before_any_work(seg, tmp_path):
    result = run_sh("--seg", seg, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "--seg takes none, v2, v3p or v2,v3p" in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_the_options():
    result = run_sh("--help")
    assert result.returncode == 0
    for option in ("--voc-root", "--seg none|v2|v3p|v2,v3p", "--gpus", "--variants", "--seeds", "--stage1-only"):
        assert option in result.stdout


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--variants", "relu,0.9,sigmoid", "--variants takes a comma list"),
    ("--variants", "1.5", "--variants takes a comma list"),
    ("--seeds", "0,one", "--seeds takes a comma list"),
    ("--gpus", "abc", "--gpus takes a positive number"),
    ("--gpus", "0", "--gpus takes a positive number"),
    ("--device", "gpu0", "--device takes auto, cpu, cuda"),
    ("--demo-size", "64", "--demo-size takes an image side of at least 96 px"),
    ("--demo-size", "big", "--demo-size takes an image side"),
])
def test_bad_options_are_refused_before_any_work(option, value, message, tmp_path):
    result = run_sh(option, value, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()
