"""Training-step parity with the original (fixture I): K optimizer steps on a stored batch, in float64.

For every ``I_<trainer>_s<seed>.json`` in the fixture folder (``tests/fixtures/parity/expected``, or the folder
named by ``DRS_PARITY_EXPECTED``), the model is loaded from the ``make_weights.py`` checkpoint of that seed with
the loader users use, and the optimizer, parameter groups, loss and training mode come from the functions the
training scripts call, with the VOC configs' values. Every step's loss and every parameter's update
``w_K - w_0`` (its norm and 64 sampled entries) must match the original's.
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
from utils.pseudo_labels import top_class_target
from utils.seg_training import deeplab_v2_recipe, deeplab_v3plus_recipe, make_optimizer, set_training_mode
from utils.training import epoch_lr_factor, set_lr

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


def stage1(weights, batch, steps):
    cfg = config.load(REPO / "configs" / "cls_voc.yaml")
    model, _ = checkpoints.load_classifier(weights)
    model.double()
    optimizer = train_cls.make_optimizer(model, cfg["train"])
    set_lr(optimizer, epoch_lr_factor(1, cfg["train"]))  # as the first epoch of fit()

    def step():
        model.train()
        return train_cls.classification_loss(model, batch["images"], batch["labels"])

    return model, optimizer, step, checkpoints.ours_to_released_vgg


def refine(weights, batch, steps):
    cfg = config.load(REPO / "configs" / "refine_voc.yaml")
    model, _ = checkpoints.load_refiner(weights)
    model.double()
    optimizer = train_refine.make_optimizer(model, cfg["train"])
    set_lr(optimizer, epoch_lr_factor(1, cfg["train"]))
    maps = voc.maps_to_scores(batch["maps_uint8"].numpy())  # what the stage-2 dataset yields
    np.testing.assert_array_equal(top_class_target(maps).numpy(), batch["target"].float().numpy())

    def step():
        model.train()
        return train_refine.refinement_loss(model, batch["images"], maps.double())

    return model, optimizer, step, checkpoints.ours_to_released_vgg


def deeplab_v2(weights, batch, steps):
    # the recipe's lr / 100: the fixture's random weights diverge at the VOC lr (fixture README, section 6)
    cfg = config.load(REPO / "DeepLab-V2-PyTorch" / "configs" / "voc12.yaml", ["SOLVER.LR=2.5e-6"])
    model, _ = checkpoints.load_deeplab_v2(weights)
    assert list(model.scales) == list(cfg["MODEL"]["MSC_SCALES"])
    model.double()
    recipe = deeplab_v2_recipe(cfg, model)
    optimizer = make_optimizer(recipe)
    targets = {"label": batch["gt"], "classes": batch["cls_labels"]}

    def step():
        set_training_mode(model, recipe)
        return recipe.loss(model(batch["images"]), targets)

    return model, optimizer, step, dict


def deeplab_v3plus(weights, batch, steps):
    cfg = config.load(REPO / "DeepLabV3Plus-Pytorch" / "configs" / "voc.yaml")
    model, _ = checkpoints.load_deeplab_v3plus(weights)
    model.set_backbone_bn_momentum(cfg["MODEL"]["BACKBONE_BN_MOMENTUM"])  # as main.py's build_model
    model.double()
    recipe = deeplab_v3plus_recipe(cfg, model)
    optimizer = make_optimizer(recipe)

    def step():
        set_training_mode(model, recipe)
        for module in model.modules():  # the fixture's one change to training: a deterministic step
            if isinstance(module, nn.Dropout):
                module.eval()
        return recipe.loss(model(batch["images"]), {"label": batch["gt"]})

    return model, optimizer, step, dict


TRAINERS = {"stage1": stage1, "refine": refine, "v2": deeplab_v2, "v3p": deeplab_v3plus}


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
    model, optimizer, step, released_names = TRAINERS[trainer](parity_weights(SPECS[trainer], seed), batch, steps)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = []
    for _ in range(steps):
        loss = step()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    np.testing.assert_allclose(losses, meta["losses"], rtol=LOSS_RTOL, atol=0)

    # each of our parameters under its original name(s); the VGG map also yields the layerX_convY aliases,
    # so a parameter counts as matched when any of its names is in the fixture
    updates = {}
    for name, param in model.named_parameters():
        names = released_names({name: param.detach() - initial[name]})
        known = {k: v for k, v in names.items() if k in record["params"]}
        assert known, f"our parameter {name} ({sorted(names)}) is not in the fixture"
        updates.update(known)
    check_updates(record["params"], updates)

    for name, norm in meta.get("bn_running_mean_norms", {}).items():
        buffers = dict(model.named_buffers())
        np.testing.assert_allclose(buffers[name].norm().item(), norm, rtol=NORM_RTOL, err_msg=name)
