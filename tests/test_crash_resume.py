"""Crash consistency: what a killed process leaves behind is never read as finished, and is cleaned up."""

import os
import random
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, run_cli
from utils.io import save_json

WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
from utils.io import atomic_write
def slow(tmp):
    open(tmp, "w").write("half")
    print("writing", flush=True)
    time.sleep(60)
atomic_write({path!r}, slow)
"""


def test_a_killed_write_leaves_no_file_and_its_temporary_is_removed_next_time(tmp_path):
    target = tmp_path / "scores.json"
    save_json(target, {"old": 1})
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(target))],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    orphans = list(tmp_path.glob(".scores.json.*.tmp"))
    assert len(orphans) == 1 and orphans[0].read_text() == "half"
    assert '"old": 1' in target.read_text()  # the previous version stays under the final name
    save_json(target, {"new": 2})
    assert '"new": 2' in target.read_text() and not list(tmp_path.glob(".scores.json.*.tmp"))


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "scores.json"
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(target))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        save_json(target, {"mine": 1})
        assert len(list(tmp_path.glob(".scores.json.*.tmp"))) == 1  # the other process is still writing
    finally:
        writer.kill()
        writer.wait()


def test_atomic_files_get_the_mode_of_any_new_file(tmp_path):
    path = save_json(tmp_path / "a.json", {})
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's 0600


def kill_when_written(args, folder, pattern, count, delay=0.0, timeout=300):
    """Run a tool and SIGKILL it ``delay`` seconds after ``count`` files matching ``pattern`` exist in ``folder``;
    return the names present at the kill (every one must already be complete: files appear under their final
    name only when whole)."""
    process = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while len(list(folder.glob(pattern))) < count:
        assert process.poll() is None, f"the run ended before the kill: {process.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no output within the timeout"
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return sorted(p.name for p in folder.glob(pattern))


def kill_at_random_points(args, folder, pattern, total, seed, kills=2):
    """Kill a tool ``kills`` times, each a seeded 0-0.3 s after one or two more files appeared (the rerun after
    a kill resumes the job); stops early when all ``total`` files are there. Returns the names present after
    each kill."""
    rng = random.Random(seed)
    after = []
    for _ in range(kills):
        count = len(list(folder.glob(pattern))) + rng.randint(1, 2)
        if count >= total:
            break
        after.append(kill_when_written(args, folder, pattern, count, delay=rng.uniform(0, 0.3)))
    return after


def same_files(a, b, pattern):
    names = sorted(str(p.relative_to(a)) for p in a.glob(pattern))
    assert names == sorted(str(p.relative_to(b)) for p in b.glob(pattern)) and names
    different = [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]
    assert not different, f"{len(different)} files differ after the rerun, e.g. {different[:3]}"


def test_killed_localization_maps_rerun_to_the_same_files(parity_weights, parity_voc, tmp_path):
    args = ["make_localization_maps.py", "--voc-root", parity_voc, "--list", parity_voc / "lists/train_aug_cls.txt",
            "--checkpoint", parity_weights("drs_cls_learnable"), "--batch-size", "1", "--num-workers", "0",
            "--size", "256", "--scales", "256"]  # ~0.3 s an image: the kill lands before the last one
    run_cli(*args, "--out", tmp_path / "whole")
    killed = tmp_path / "killed"
    total = len(list((tmp_path / "whole").glob("*.npy")))
    kills = kill_at_random_points([*args, "--out", killed], killed, "*.npy", total, seed=1)
    assert kills and len(kills[-1]) < total, "killed too late"
    for present in kills:  # complete files only, never a truncated one under its final name
        for name in present:
            assert np.load(killed / name).shape == np.load(tmp_path / "whole" / name).shape
    result = run_cli(*args, "--out", killed)
    assert f"{len(kills[-1])} of" in result.stdout
    same_files(tmp_path / "whole", killed, "*.npy")
    assert not list(killed.glob(".*.tmp"))

    # two runs into one folder at once: each file is written whole by one of them, none is corrupted
    shared = tmp_path / "shared"
    runs = [subprocess.Popen([sys.executable, *map(str, args), "--out", str(shared)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [run.wait() for run in runs] == [0, 0], [run.stderr.read()[-1000:] for run in runs]
    same_files(tmp_path / "whole", shared, "*.npy")


def test_killed_crf_pseudo_labels_rerun_to_the_same_files(parity_weights, parity_voc, tmp_path):
    args = ["make_pseudo_labels.py", "--voc-root", parity_voc, "--list", parity_voc / "lists/train_aug_cls.txt",
            "--checkpoint", parity_weights("drs_refine"), "--crf", "--jobs", "1", "--num-workers", "0",
            "--size", "96", "--scales", "96"]
    run_cli(*args, "--out", tmp_path / "whole")
    killed = tmp_path / "killed"
    total = len(list((tmp_path / "whole").glob("*.png")))
    kills = kill_at_random_points([*args, "--out", killed], killed, "*.png", total, seed=2)  # in the CRF pass
    assert kills and len(kills[-1]) < total, "killed too late"
    for present in kills:
        for name in present:
            assert Image.open(killed / name).size == Image.open(tmp_path / "whole" / name).size
    without_crf = run_cli(*[a for a in args if a != "--crf"], "--out", killed, check=False)
    assert without_crf.returncode == 2 and "other settings" in without_crf.stderr  # never mixed with plain labels
    run_cli(*args, "--out", killed)
    same_files(tmp_path / "whole", killed, "*.png")
    assert not list((killed / ".raw").glob("*.png"))


@pytest.mark.parametrize(("phase", "pattern"), [("logit", "*.npy"), ("crf", "*.png")])
def test_killed_deeplab_evaluation_with_crf_reruns_to_the_same_files(phase, pattern, parity_voc, tmp_path):
    """DeepLab-V2 eval killed in its network pass or its CRF pass: the rerun keeps the finished files, computes
    the rest, and every file and score equals an uninterrupted run's."""
    import models
    from utils import checkpoints

    torch.manual_seed(0)
    model_args = {"n_blocks": [1, 1, 1, 1], "width": 0.125, "scales": []}
    network = models.build("deeplab_v2", **model_args)
    checkpoint = checkpoints.save(tmp_path / "v2.pth", kind="deeplab_v2", model=network, model_args=model_args)
    args = ["DeepLab-V2-PyTorch/eval.py", "--config", "DeepLab-V2-PyTorch/configs/demo.yaml", "--voc-root", parity_voc,
            "--list", parity_voc / "lists/train_aug_cls.txt", "--checkpoint", checkpoint, "--crf", "--jobs", "1"]
    run_cli(*args, "--out", tmp_path / "whole")
    killed = tmp_path / "killed"
    present = kill_when_written([*args, "--out", killed], killed / phase, pattern, 1)
    assert len(present) < len(list((tmp_path / "whole" / phase).glob(pattern))), "killed too late"
    for name in present:  # complete files only
        if phase == "crf":
            assert Image.open(killed / phase / name).size == Image.open(tmp_path / "whole" / phase / name).size
        else:
            assert np.load(killed / phase / name).shape == np.load(tmp_path / "whole" / phase / name).shape
    run_cli(*args, "--out", killed)
    for pattern in ("logit/*.npy", "*.png", "crf/*.png", "scores*.json"):
        same_files(tmp_path / "whole", killed, pattern)
    assert not [p for p in killed.rglob(".*.tmp")]
