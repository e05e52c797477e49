"""The training engine: data order and augmentation as functions of (seed, epoch, index), resume after a kill
to the same weights as an uninterrupted run, validation shared by torchrun processes."""

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from tests.conftest import REPO, entry_point, run_cli
from utils import engine
from utils.distributed import Runtime
from utils.reports import curves


def test_the_order_is_a_function_of_seed_and_epoch():
    def order(seed, epoch):
        sampler = engine.ResumableSampler(10, seed)
        sampler.set_position(epoch)
        return [index for index, _ in sampler]

    assert order(3, 2) == order(3, 2) and sorted(order(3, 2)) == list(range(10))
    assert order(3, 2) != order(3, 3) and order(3, 2) != order(4, 2)


def test_ranks_share_an_epoch_and_a_skip_continues_it():
    parts = []
    for rank in range(3):
        sampler = engine.ResumableSampler(10, 5, rank=rank, world_size=3)
        sampler.set_position(1)
        parts.append([index for index, _ in sampler])
    assert [len(p) for p in parts] == [4, 4, 4] and set(sum(parts, [])) == set(range(10))  # padded to 12
    sampler = engine.ResumableSampler(10, 5)
    sampler.set_position(1)
    whole = list(sampler)
    sampler.set_position(1, skip=4)
    assert list(sampler) == whole[4:]


class RandomItems(torch.utils.data.Dataset):
    """Each item draws from torch's global generator, as the project's random transforms do."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return {"index": torch.tensor(index), "draw": torch.rand(3)}


def epoch_batches(workers, epoch):
    loader = engine.make_train_loader(RandomItems(), batch_size=4, workers=workers, seed=7, runtime=Runtime("cpu"),
                                      drop_last=True)
    loader.sampler.set_position(epoch)
    return [(b["index"].tolist(), b["draw"]) for b in loader]


def test_augmentation_depends_on_the_sample_not_on_the_workers():
    state = torch.get_rng_state()
    single = epoch_batches(0, epoch=1)
    assert torch.equal(torch.get_rng_state(), state)  # loading leaves the global generator (dropout's) alone
    for (ids, draws), (ids2, draws2) in zip(single, epoch_batches(2, epoch=1), strict=True):
        assert ids == ids2 and torch.equal(draws, draws2)
    assert not torch.equal(single[0][1], epoch_batches(0, epoch=2)[0][1])


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after the resume, e.g. {different[:3]}"


def log_lines(path):
    return path.read_text().count("\n") if path.is_file() else 0


def run_killed_at(args, out, points, timeout=240):
    """Run a training with ``--resume auto`` until it finishes, killing it (SIGKILL) once at each of ``points``:
    ``(records, delay)`` kills a run ``delay`` seconds after it appended ``records`` lines to its log (0: during
    start-up or its first update). Returns the update count of ``last.pth`` after each kill (None: none yet)."""
    stopped = []
    for records, delay in points:
        start = log_lines(out / "log.jsonl")
        process = subprocess.Popen([sys.executable, *map(str, args), "--out", out, "--resume", "auto"], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + timeout
        while log_lines(out / "log.jsonl") < start + records and process.poll() is None:
            assert time.time() < deadline, "the run wrote no log within the timeout"
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        assert process.wait() in (0, -signal.SIGKILL), process.stderr.read()[-2000:]
        last = out / "last.pth"
        stopped.append(torch.load(last, weights_only=True)["iteration"] if last.is_file() else None)
    result = run_cli(*args, "--out", out, "--resume", "auto")
    return stopped, result


STAGE1 = ["train_cls.py", "--config", "configs/cls_demo.yaml", "--no-progress", "--set", "data.num_workers=1",
          "--set", "data.val_list=lists/val_cls.txt", "--set", "train.epochs=4", "--set", "train.batch_size=2",
          "--set", "val.every=2", "--set", "model.drs=learnable", "--set", "output.log_every=1",
          "--set", "data.input_size=72", "--set", "data.crop_size=64", "--set", "data.test_size=64"]
V3P = ["DeepLabV3Plus-Pytorch/main.py", "--config", "DeepLabV3Plus-Pytorch/configs/demo.yaml", "--labels",
       "SegmentationClassAug", "--no-progress", "--set", "model.depth=50", "--set", "model.stem_channels=16",
       "--set", "train.batch_size=2", "--set", "data.num_workers=1", "--set", "data.crop_size=65",
       "--set", "train.iterations=7", "--set", "train.save_every=2", "--set", "output.log_every=1"]


V2 = ["DeepLab-V2-PyTorch/train.py", "--config", "DeepLab-V2-PyTorch/configs/demo.yaml", "--labels",
      "SegmentationClassAug", "--no-progress", "--set", "model.width=0.125", "--set", "train.batch_size=2",
      "--set", "train.accumulation=2", "--set", "data.num_workers=1", "--set", "data.crop_size=65",
      "--set", "train.iterations=5", "--set", "train.save_every=2", "--set", "output.log_every=1"]
REFINE = ["train_refine.py", "--config", "configs/refine_demo.yaml", "--no-progress", "--set", "data.size=64",
          "--set", "data.num_workers=1", "--set", "data.val_list=lists/val_cls.txt", "--set", "train.epochs=3",
          "--set", "train.batch_size=2", "--set", "val.every=0", "--set", "output.log_every=1"]


def with_maps(voc_root, tmp_path, parity_weights):
    """Stage 2 reads stage-1 maps: 64-px maps of the parity images from the parity classifier."""
    maps = tmp_path / "maps"
    run_cli("make_localization_maps.py", "--voc-root", voc_root, "--list", voc_root / "lists/train_aug_cls.txt",
            "--checkpoint", parity_weights("drs_cls_learnable"), "--out", maps, "--size", "64", "--scales", "64",
            "--num-workers", "0")
    return ["--set", f"data.maps_dir={maps}"]


# (script arguments, final checkpoint, seed, log lines after which the first kill certainly follows a checkpoint)
TRAINERS = {"stage1": (STAGE1, "last.pth", 1, (4, 8)), "refine": (REFINE, "last.pth", 2, (4, 6)),
            "v2": (V2, "checkpoint_final.pth", 3, (3, 4)), "v3p": (V3P, "checkpoint_final.pth", 4, (3, 4))}


@pytest.mark.parametrize("args,final,seed,first", TRAINERS.values(), ids=TRAINERS.keys())
def test_a_run_killed_at_random_points_resumes_to_the_uninterrupted_weights(parity_voc, tmp_path, parity_weights,
                                                                            args, final, seed, first):
    """Each trainer killed three times at seeded random points and resumed with ``--resume auto`` each time ends
    with the uninterrupted run's weights, bit for bit. A point is a number of log lines plus up to 1.5 times the
    time between two lines, so
    kills land in start-up, updates, validations and checkpoint writes; the first one comes after a checkpoint
    (so that a resume from the middle of the run is certain), the other two anywhere from start-up on. Stage 1
    and 2: 3 updates an epoch (6 images, batch 2); DeepLab-V2: 2 batches an update (accumulation); DeepLab-V3+
    (dropout in its head): 3 batches an epoch, checkpoints every 2nd update, so resumes start mid-epoch."""
    if args is REFINE:
        args = [*args, *with_maps(parity_voc, tmp_path, parity_weights)]
    args = [*args, "--voc-root", parity_voc]
    run_cli(*args, "--out", tmp_path / "whole")
    total = torch.load(tmp_path / "whole" / final, weights_only=True)["iteration"]
    times = [r["time"] for r in curves.read_log(tmp_path / "whole")]
    spacing = (times[-1] - times[0]) / (len(times) - 1)  # seconds between log lines
    rng = random.Random(seed)
    points = [(rng.randint(*first), rng.uniform(0, 1.5) * spacing)]
    points += [(rng.randint(0, 4), rng.uniform(0, 1.5) * spacing) for _ in range(2)]
    killed = tmp_path / "killed"
    stopped, result = run_killed_at(args, killed, points)
    assert any(n is not None and n < total for n in stopped), f"no kill landed mid-run: {points} -> {stopped}"
    assert "resumed from" in result.stdout
    assert_same_weights(weights(tmp_path / "whole" / final), weights(killed / final))

    # the run log of the interrupted run draws as one curve; TensorBoard gets the same numbers when installed
    records = curves.read_log(killed)
    steps, losses = curves.series(records, "loss", "train")
    total = torch.load(killed / final, weights_only=True)["iteration"]
    assert steps.tolist() == list(range(1, total + 1))  # updates logged twice (before the kill, resumed) once
    picture = tmp_path / "curves.png"
    run_cli("-m", "utils.reports.curves", "--out", picture, f"whole={tmp_path / 'whole'}", f"resumed={killed}")
    assert Image.open(picture).size == (3 * curves.PANEL_W, 2 * (curves.PANEL_H + 20))
    if importlib.util.find_spec("tensorboard"):
        assert list((tmp_path / "whole" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_validate_together_and_score_as_one(parity_voc, tmp_path):
    """Each process scores its half of the validation images and the sums are reduced: the mIoU equals one
    process's (to 1e-5: the two runs batch the images differently, which moves a few pixels' float scores in
    the last bits). lr 0 and no BN keep the weights at rank 0's initialisation in both runs."""
    args = [*STAGE1, "--voc-root", str(parity_voc), "--set", "train.epochs=1", "--set", "val.every=1",
            "--set", "data.num_workers=0", "--set", "train.lr=0", "--set", "model.batch_norm=false"]
    run_cli(*args, "--out", tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             *args, "--out", str(tmp_path / "two")], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = (torch.load(tmp_path / run / "last.pth", weights_only=True) for run in ("one", "two"))
    assert_same_weights(one["model"], two["model"])
    assert two["metrics"]["val_miou"] == pytest.approx(one["metrics"]["val_miou"], abs=1e-5)
    assert one["metrics"]["val_miou"] > 0 and one["metrics"]["val_accuracy"] == two["metrics"]["val_accuracy"]
    assert two["metrics"]["val_loss"] == pytest.approx(one["metrics"]["val_loss"], rel=1e-6)


TRAINERS = {"train_cls.py": ["train.epochs=-3", "val.every=-1", "train.batch_size=0", "output.log_every=0"],
            "train_refine.py": ["train.epochs=0", "train.seed=-1", "data.num_workers=1.5"],
            "DeepLab-V2-PyTorch/train.py": ["train.iterations=-5", "train.save_every=0", "train.accumulation=0",
                                            "train.lr_step=0"],
            "DeepLabV3Plus-Pytorch/main.py": ["train.iterations=0", "train.batch_size=2.5", "train.amp=fp8"]}


@pytest.mark.parametrize("script,bad", [(s, b) for s, values in TRAINERS.items() for b in values])
def test_every_trainer_refuses_a_bad_count_in_one_line(script, bad, parity_voc, tmp_path, capsys):
    """Checked when the config is read, before any data or model: exit status 2, one line naming the key, and
    nothing written."""
    main = entry_point(script)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["--voc-root", str(parity_voc), "--out", str(out), "--no-progress", "--set", bad])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {bad.split('=')[0]} must be") and not out.exists()
