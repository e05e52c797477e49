"""Training-step parity with the original (fixture I): K optimizer steps on a stored batch, in float64.

For every ``I_<trainer>_s<seed>.json`` in the fixture folder (``tests/fixtures/parity/expected``, or the folder
named by ``DRS_PARITY_EXPECTED``), the model is loaded from the ``make_weights.py`` checkpoint of that seed with
the loader users use, and the optimizer, parameter groups, loss, training mode and first lr come from the
:class:`utils.engine.Trainer` and schedule the training scripts build, with the VOC configs' values. Every
step's loss and every parameter's update ``w_K - w_0`` (its norm and 64 sampled entries) must match the
original's.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import train_cls
import train_refine
from tests.conftest import PARITY, REPO
from utils import checkpoints, config, voc
from utils.seg.training import (
    deeplab_v2_schedule,
    deeplab_v2_trainer,
    deeplab_v3plus_schedule,
    deeplab_v3plus_trainer,
)
from utils.wsss.pseudo_labels import top_class_target
from utils.wsss.training import epoch_schedule

EXPECTED = Path(os.environ.get("DRS_PARITY_EXPECTED", PARITY / "expected"))
FIXTURE_NAME = re.compile(r"I_(?P<trainer>[a-z0-9]+)_s(?P<seed>\d+)\.json")
FIXTURES = sorted(p.name for p in EXPECTED.glob("I_*_s*.json") if FIXTURE_NAME.fullmatch(p.name))
SPECS = {"stage1": "drs_cls_learnable", "refine": "drs_refine", "v2": "deeplabv2_msc",
         "v3p": "deeplabv3plus_resnet101"}
LOSS_RTOL, NORM_RTOL, UPDATE_RTOL = 1e-9, 1e-7, 1e-7  # the fixture README's tolerances for float64


def test_fixture_folder_holds_every_trainer():
    trainers = {FIXTURE_NAME.fullmatch(name)["trainer"] for name in FIXTURES}
    assert trainers == set(SPECS), f"{EXPECTED}: fixture I files for {sorted(trainers)}"


def double_batch(npz):
    return {k: torch.from_numpy(npz[k]).double() if npz[k].dtype.kind == "f" else torch.from_numpy(npz[k])
            for k in npz.files}


def first_update_lr(trainer, schedule):
    """The lr of every group at the first update, as the engine sets it."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = schedule.lr_at(group["base_lr"], 0)
    return trainer


def stage1(weights, batch):
    cfg = config.load(REPO / "configs" / "cls_voc.yaml")
    model, margs = checkpoints.load_classifier(weights)
    trainer = train_cls.make_trainer(cfg, model.double(), margs)
    return first_update_lr(trainer, epoch_schedule(cfg, 1)), {"image": batch["images"], "classes": batch["labels"]}


def refine(weights, batch):
    cfg = config.load(REPO / "configs" / "refine_voc.yaml")
    model, margs = checkpoints.load_refiner(weights)
    trainer = train_refine.make_trainer(cfg, model.double(), margs)
    maps = voc.maps_to_scores(batch["maps_uint8"].numpy())  # what the stage-2 dataset yields
    np.testing.assert_array_equal(top_class_target(maps).numpy(), batch["target"].float().numpy())
    return first_update_lr(trainer, epoch_schedule(cfg, 1)), {"image": batch["images"], "maps": maps.double()}


def deeplab_v2(weights, batch):
    # the recipe's lr / 100: the fixture's random weights diverge at the VOC lr (fixture README, section 6)
    cfg = config.load(REPO / "DeepLab-V2-PyTorch" / "configs" / "voc12.yaml", ["train.lr=2.5e-6"])
    model, margs = checkpoints.load_deeplab_v2(weights)
    assert list(model.scales) == list(cfg["model"]["msc_scales"])
    trainer = deeplab_v2_trainer(cfg, model.double(), margs)
    return (first_update_lr(trainer, deeplab_v2_schedule(cfg)),
            {"image": batch["images"], "label": batch["gt"], "classes": batch["cls_labels"]})


def deeplab_v3plus(weights, batch):
    cfg = config.load(REPO / "DeepLabV3Plus-Pytorch" / "configs" / "voc.yaml")
    model, margs = checkpoints.load_deeplab_v3plus(weights)
    model.set_backbone_bn_momentum(cfg["model"]["backbone_bn_momentum"])  # as main.py's build_model
    trainer = deeplab_v3plus_trainer(cfg, model.double(), margs)
    train_mode = trainer.train_mode

    def deterministic_train_mode(net):  # the fixture's one change to training: dropout off
        train_mode(net)
        for module in net.modules():
            if isinstance(module, nn.Dropout):
                module.eval()

    trainer.train_mode = deterministic_train_mode
    return first_update_lr(trainer, deeplab_v3plus_schedule(cfg)), {"image": batch["images"], "label": batch["gt"]}


TRAINERS = {"stage1": stage1, "refine": refine, "v2": deeplab_v2, "v3p": deeplab_v3plus}
RELEASED_NAMES = {"stage1": checkpoints.ours_to_released_vgg, "refine": checkpoints.ours_to_released_vgg,
                  "v2": dict, "v3p": dict}


def check_updates(expected, updates):
    """Every fixture parameter has an update of ours under its name, within the fixture's tolerances."""
    missing = sorted(expected.keys() - updates.keys())
    assert not missing, f"parameters of the original with no counterpart here: {missing[:5]} ({len(missing)})"
    for name, record in expected.items():
        update = updates[name]
        assert list(update.shape) == record["shape"], name
        flat = update.flatten()
        np.testing.assert_allclose(flat.norm().item(), record["update_norm"], rtol=NORM_RTOL, atol=0, err_msg=name)
        values = np.asarray(record["update"])
        np.testing.assert_allclose(flat[record["idx"]].numpy(), values, rtol=0,
                                   atol=UPDATE_RTOL * np.abs(values).max(), err_msg=name)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_training_steps_match_original(parity_weights, fixture):
    match = FIXTURE_NAME.fullmatch(fixture)
    trainer, seed = match["trainer"], int(match["seed"])
    record = json.loads((EXPECTED / fixture).read_text())
    meta, steps = record["meta"], record["meta"]["steps"]
    assert f"specs/{SPECS[trainer]}.json" in meta["weights"] and meta["seed"] == seed
    batch = double_batch(np.load(EXPECTED / fixture.replace(".json", "_batch.npz")))

    torch.manual_seed(seed)
    job, inputs = TRAINERS[trainer](parity_weights(SPECS[trainer], seed), batch)
    model, optimizer = job.model, job.optimizer
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = []
    for _ in range(steps):  # one engine update each (the lr of the first update throughout, as the fixture)
        job.train_mode(model)
        optimizer.zero_grad(set_to_none=True)
        loss = job.loss(model, inputs)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    np.testing.assert_allclose(losses, meta["losses"], rtol=LOSS_RTOL, atol=0)

    # each of our parameters under its original name(s); the VGG map also yields the layerX_convY aliases,
    # so a parameter counts as matched when any of its names is in the fixture
    updates = {}
    for name, param in model.named_parameters():
        names = RELEASED_NAMES[trainer]({name: param.detach() - initial[name]})
        known = {k: v for k, v in names.items() if k in record["params"]}
        assert known, f"our parameter {name} ({sorted(names)}) is not in the fixture"
        updates.update(known)
    check_updates(record["params"], updates)

    for name, norm in meta.get("bn_running_mean_norms", {}).items():
        buffers = dict(model.named_buffers())
        np.testing.assert_allclose(buffers[name].norm().item(), norm, rtol=NORM_RTOL, err_msg=name)
