"""Stage 1: train the VGG-16 + DRS multi-label classifier (reference §2).

    python train_cls.py --config configs/cls_voc.yaml --voc-root /data/VOC2012
    torchrun --nproc_per_node 2 train_cls.py --config configs/cls_voc.yaml --voc-root /data/VOC2012
    python train_cls.py --config configs/cls_demo.yaml --voc-root data/demo/VOC2012 --set model.drs=relu

Writes ``<out>/last.pth`` after every epoch (``--resume auto`` continues from it), ``best.pth`` when
``val.select_best`` is on, ``config.yaml`` and ``log.jsonl``.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from models.classifier import DRSClassifier
from utils import checkpoints, config, voc
from utils.distributed import Runtime
from utils.evaluation import validate_classifier
from utils.io import atomic_write
from utils.training import RunLog, build_optimizer, epoch_lr_factor, resume, resume_path, seed_everything, set_lr
from utils.transforms import classifier_train_transform, test_transform


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cls_voc.yaml")
    parser.add_argument("--voc-root", default=None, help="overrides data.voc_root")
    parser.add_argument("--out-dir", default=None, help="overrides output.dir")
    parser.add_argument("--resume", default=None, help="a checkpoint path, or 'auto' for <out>/last.pth if present")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def model_args(cfg):
    m = cfg["model"]
    drs = None if m["drs"] in ("relu", None) else m["drs"]
    return {"num_classes": voc.NUM_CLASSES, "drs": drs, "width": float(m["width"]),
            "pretrained": bool(m["pretrained"]), "pretrained_path": m.get("pretrained_path")}


def warm_start(model, path):
    """Non-strict load of one of our classifier checkpoints: convs and head; DRS gates absent there keep
    their init."""
    state = checkpoints.load_file(path)
    if not checkpoints.is_ours(state) or state["kind"] != "classifier":
        raise checkpoints.CheckpointError(f"model.init_from {path} must be a classifier checkpoint of this project")
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or any(not k.endswith("fc.0.weight") for k in missing):
        raise checkpoints.CheckpointError(f"{path} does not fit this classifier (missing {missing[:3]})")


def build_loaders(cfg, runtime):
    data = cfg["data"]
    root = data["voc_root"]
    if not root:
        raise voc.DataError("no VOC root: pass --voc-root or set data.voc_root")
    root = Path(root)
    train_list = root / data["train_list"]
    if not train_list.is_file():
        voc.derive_cls_lists(root, train_list.parent)
    train_set = voc.VOCDataset(root, voc.read_list(train_list, root),
                               classifier_train_transform(data["input_size"], data["crop_size"], data["jitter"]))
    batch = cfg["train"]["batch_size"]
    if batch % runtime.world_size:
        raise ValueError(f"global batch {batch} is not divisible by {runtime.world_size} processes")
    if runtime.distributed:
        sampler = DistributedSampler(train_set, shuffle=True, seed=cfg["train"]["seed"])
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(cfg["train"]["seed"]))
    train_loader = DataLoader(train_set, batch_size=batch // runtime.world_size, sampler=sampler,
                              num_workers=data["num_workers"], collate_fn=voc.collate, drop_last=False,
                              pin_memory=runtime.device.type == "cuda", persistent_workers=data["num_workers"] > 0)
    val_loader = None
    if cfg["val"]["every"] and runtime.is_main:
        val_set = voc.VOCDataset(root, voc.read_list(root / data["val_list"], root), test_transform(data["test_size"]),
                                 masks=("label", "saliency"))
        val_loader = DataLoader(val_set, batch_size=batch, num_workers=data["num_workers"], collate_fn=voc.collate)
    return train_loader, val_loader


def train(cfg, args):
    runtime = Runtime(args.device)
    out_dir = Path(cfg["output"]["dir"])
    seed_everything(cfg["train"]["seed"], runtime.rank)
    train_loader, val_loader = build_loaders(cfg, runtime)

    margs = model_args(cfg)
    model = DRSClassifier(**margs)
    if cfg["model"].get("init_from"):
        warm_start(model, cfg["model"]["init_from"])
    model.to(runtime.device)
    tcfg = cfg["train"]
    optimizer = build_optimizer(model.parameter_groups(tcfg["lr"], tcfg["lr_multipliers"]), tcfg)
    start_epoch, best = 1, {}
    resume_from = resume_path(args.resume, out_dir)
    log = RunLog(out_dir / "log.jsonl", enabled=runtime.is_main)
    if resume_from:
        state = resume(resume_from, model, optimizer, "classifier")
        start_epoch, best = state["epoch"] + 1, state.get("best", {})
        if runtime.is_main:
            print(f"resumed from {resume_from} after epoch {state['epoch']}")
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(config.dump(cfg)))
        print(f"stage 1: {margs['drs'] or 'relu'} classifier, width {margs['width']}, {len(train_loader.dataset)} "
              f"train images, {tcfg['epochs']} epochs, global batch {tcfg['batch_size']} on {runtime.world_size} "
              f"process(es), {runtime.device}")
    net = model
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)

    step = (start_epoch - 1) * len(train_loader)
    for epoch in range(start_epoch, tcfg["epochs"] + 1):
        set_lr(optimizer, epoch_lr_factor(epoch, tcfg))
        if runtime.distributed:
            train_loader.sampler.set_epoch(epoch)
        net.train()
        running, seen = 0.0, 0
        quiet = args.no_progress or not runtime.is_main
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{tcfg['epochs']}", disable=quiet)
        for batch in bar:
            images = batch["image"].to(runtime.device, non_blocking=True)
            classes = batch["classes"].to(runtime.device, non_blocking=True)
            loss = F.multilabel_soft_margin_loss(net(images), classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running, seen = running + loss.item(), seen + 1
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if step % cfg["output"]["log_every"] == 0:
                log.write(event="train", epoch=epoch, step=step, loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        metrics = {"train_loss": running / max(seen, 1)}
        if val_loader is not None and epoch % cfg["val"]["every"] == 0:
            metrics.update({f"val_{k}": v for k, v in validate_classifier(model, val_loader, runtime.device,
                                                                           cfg["val"]["alpha"]).items()})
        if runtime.is_main:
            improved = "val_miou" in metrics and metrics["val_miou"] > best.get("val_miou", -1.0)
            if improved:
                best = {"epoch": epoch, "val_miou": metrics["val_miou"]}
            save = dict(kind="classifier", model=model, model_args=margs, optimizer=optimizer, epoch=epoch,
                        config=cfg, metrics=metrics, extra={"best": best})
            checkpoints.save(out_dir / "last.pth", **save)
            if improved and cfg["val"]["select_best"]:
                checkpoints.save(out_dir / "best.pth", **save)
            log.write(event="epoch", epoch=epoch, step=step, **metrics)
            print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        runtime.barrier()
    runtime.close()
    return out_dir


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = config.load(args.config, args.set)
        if args.voc_root:
            cfg["data"]["voc_root"] = args.voc_root
        if args.out_dir:
            cfg["output"]["dir"] = args.out_dir
        return train(cfg, args)
    except (voc.DataError, checkpoints.CheckpointError, config.ConfigError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
