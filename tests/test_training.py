"""Stage-1 training: the learning-rate schedule (parity fixture H), a short run, resume, DDP, warm start."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from models.classifier import DRSClassifier
from models.vgg import fold_batch_norm
from tests.conftest import PARITY, REPO, run_cli
from utils import checkpoints, config
from utils.wsss.training import build_optimizer, epoch_lr_factor, set_lr


def test_classifier_lr_schedule_matches_original():
    expected = json.loads((PARITY / "expected" / "H_lr_schedules.json").read_text())["classifier_train_cls"]
    cfg = config.load(REPO / "configs" / "cls_voc.yaml")["train"]
    model = DRSClassifier(drs="learnable", width=0.125)
    optimizer = build_optimizer(model.parameter_groups(cfg["lr"], cfg["lr_multipliers"]), cfg)
    assert [len(g["params"]) for g in optimizer.param_groups] == expected["group_sizes"]
    defaults = optimizer.defaults
    assert (defaults["momentum"], defaults["nesterov"], defaults["weight_decay"]) == (
        expected["momentum"], expected["nesterov"], expected["weight_decay"])
    assert cfg["epochs"] == len(expected["lr_per_epoch"])
    for epoch, lrs in expected["lr_per_epoch"].items():
        set_lr(optimizer, epoch_lr_factor(int(epoch), cfg))
        for ours, theirs in zip([g["lr"] for g in optimizer.param_groups], lrs, strict=True):
            assert math.isclose(ours, theirs, rel_tol=1e-12)


def test_a_fifth_multiplier_gives_the_gates_their_own_group():
    model = DRSClassifier(drs="learnable", width=0.125)
    groups = model.parameter_groups(1e-3, (1, 2, 10, 20, 100))
    gates = [p for n, p in model.named_parameters() if ".fc." in n]
    assert len(groups) == 5 and groups[4]["lr"] == 0.1 and {id(p) for p in groups[4]["params"]} == set(map(id, gates))
    assert not {id(p) for g in groups[:4] for p in g["params"]} & set(map(id, gates))
    plain = DRSClassifier(drs=None, width=0.125).parameter_groups(1e-3, (1, 2, 10, 20, 100))
    assert len(plain) == 4  # no gates, no fifth group


def test_cosine_schedule_starts_at_base_and_decays():
    cfg = {"schedule": "cosine", "epochs": 10}
    factors = [epoch_lr_factor(e, cfg) for e in range(1, 11)]
    assert factors[0] == 1.0 and all(a > b for a, b in zip(factors, factors[1:])) and factors[-1] > 0


def train_args(voc_root, out, *extra):
    return ["train_cls.py", "--config", "configs/cls_demo.yaml", "--voc-root", voc_root, "--out", out,
            "--no-progress", "--set", "data.num_workers=0", "--set", "data.val_list=lists/val_cls.txt",
            "--set", "val.every=1", "--set", "data.input_size=72", "--set", "data.crop_size=64",
            "--set", "data.test_size=64", *extra]


def test_short_run_writes_resumable_checkpoints_and_log(parity_voc, tmp_path):
    out = tmp_path / "run"
    run_cli(*train_args(parity_voc, out, "--set", "train.epochs=1"))
    state = torch.load(out / "last.pth", weights_only=True)  # our format needs no allow-list
    assert state["kind"] == "classifier" and state["epoch"] == 1
    assert {"train_loss", "val_miou", "val_loss", "val_accuracy"} <= set(state["metrics"])
    first = state["model"]
    result = run_cli(*train_args(parity_voc, out, "--set", "train.epochs=2", "--resume", "auto"))
    assert "resumed from" in result.stdout and "after epoch 1" in result.stdout
    resumed = torch.load(out / "last.pth", weights_only=True)
    assert resumed["epoch"] == 2
    assert any(not torch.equal(first[k], resumed["model"][k]) for k in first)
    epochs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["event"] == "epoch"] == [1, 2]
    assert (out / "config.yaml").is_file()
    # the checkpoint drives the map tools as is
    model, args = checkpoints.load_classifier(out / "last.pth")
    assert args["drs"] == "learnable" and args["width"] == 0.125


def test_warm_start_keeps_weights_and_initialises_gates(parity_voc, tmp_path):
    plain = tmp_path / "plain"  # cls_demo.yaml: a batch-norm backbone, like the demo's stand-in
    run_cli(*train_args(parity_voc, plain, "--set", "train.epochs=1", "--set", "model.drs=relu"))
    source = torch.load(plain / "last.pth", weights_only=True)["model"]
    for batch_norm, key in ((True, "backbone.features.0.0.weight"), (False, "backbone.features.0.weight")):
        drs = tmp_path / f"drs_bn_{batch_norm}"
        run_cli(*train_args(parity_voc, drs, "--set", "train.epochs=1", "--set", "train.lr=0.0",
                            "--set", f"model.batch_norm={str(batch_norm).lower()}",
                            "--set", f"model.init_from={plain / 'last.pth'}"))
        warm = torch.load(drs / "last.pth", weights_only=True)["model"]
        expected = source if batch_norm else fold_batch_norm(source)  # a plain backbone gets BN folded in
        torch.testing.assert_close(warm[key], expected[key])
        torch.testing.assert_close(warm["extra_conv4.weight"], source["extra_conv4.weight"])
        assert "backbone.features.1.fc.0.weight" in warm and "backbone.features.1.fc.0.weight" not in source


def test_warm_start_without_head_keeps_the_head_init(parity_voc, tmp_path):
    plain = tmp_path / "plain"
    run_cli(*train_args(parity_voc, plain, "--set", "train.epochs=1", "--set", "model.drs=relu"))
    fresh = tmp_path / "fresh"
    run_cli(*train_args(parity_voc, fresh, "--set", "train.epochs=1", "--set", "train.lr=0.0",
                        "--set", "model.init_head=false", "--set", f"model.init_from={plain / 'last.pth'}"))
    source = torch.load(plain / "last.pth", weights_only=True)["model"]
    warm = torch.load(fresh / "last.pth", weights_only=True)["model"]
    torch.testing.assert_close(warm["backbone.features.0.0.weight"], source["backbone.features.0.0.weight"])
    assert not torch.equal(warm["extra_conv1.weight"], source["extra_conv1.weight"])


def test_bad_config_key_is_a_clear_error(parity_voc, tmp_path):
    result = run_cli(*train_args(parity_voc, tmp_path / "x", "--set", "train.lrr=1"), check=False)
    assert result.returncode != 0 and "unknown config key 'train.lrr'" in result.stderr


def test_missing_voc_root_is_a_clear_error(tmp_path):
    result = run_cli(*train_args(tmp_path / "nowhere", tmp_path / "x"), check=False)
    assert result.returncode != 0 and "nowhere" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_torchrun_matches_global_batch(parity_voc, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *train_args(parity_voc, out, "--set", "train.epochs=1")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "global batch 10 on 2 process(es)" in result.stdout
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
