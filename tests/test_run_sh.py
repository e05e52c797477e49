"""run.sh's command line: a bad option fails at once, before any stage runs."""

import os
import signal
import subprocess
import sys
import time

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


def test_quick_demo_killed_mid_stage_reruns_to_the_same_reports(tmp_path):
    """`run.sh --quick` killed with SIGKILL in the middle of the localization maps, rerun, killed again after
    DeepLab-V2's first checkpoint, rerun to the end: every report equals an uninterrupted run's."""
    env = os.environ | {"PYTHON": sys.executable}

    def run(out):
        return subprocess.run(["bash", "run.sh", "--quick", "--out", str(out)], cwd=REPO, capture_output=True,
                              text=True, timeout=900, env=env)

    def run_until(out, ready):
        process = subprocess.Popen(["bash", "run.sh", "--quick", "--out", str(out)], cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 900
        while not ready():
            assert process.poll() is None, "run.sh ended before the kill"
            assert time.time() < deadline
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # run.sh and the stage it is running
        process.wait()

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(whole).returncode == 0
    maps = killed / "VOC2012" / "localization_maps"
    run_until(killed, lambda: len(list(maps.glob("*.npy"))) >= 1)
    assert len(list(maps.glob("*.npy"))) < 40 and not (killed / "pipeline.md").exists()
    v2 = killed / "deeplab_v2"
    run_until(killed, lambda: (v2 / "last.pth").exists())
    assert not (v2 / "checkpoint_final.pth").exists()
    result = run(killed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained, skipping" in result.stdout  # the finished stages were not run again
    for report in ("stage1_comparison.md", "pipeline.md", "segmentation.md"):
        expected = (whole / report).read_text().replace(str(whole), "OUT")
        assert (killed / report).read_text().replace(str(killed), "OUT") == expected, report
