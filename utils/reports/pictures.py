"""Pictures: CAM heat maps and label maps side by side, one row per image.

    python -m utils.reports.pictures --voc-root VOC2012 --list VOC2012/lists/val_cls.txt --out maps.png \
        --checkpoint "plain=cls_relu/last.pth" --checkpoint "DRS=cls_drs/last.pth" --labels "pseudo=labels_dir"

Columns: the image, its GT, then each classifier's multi-scale CAM (max over the image's classes, as a heat
map over the image) and each folder of label maps (VOC colours, 255 white).
"""

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from utils import checkpoints, voc
from utils.io import atomic_write, voc_palette
from utils.wsss.cam import LOCALIZATION_SCALES, LOCALIZATION_SIZE, multiscale_cam
from utils.wsss.transforms import eval_transform


def heat_overlay(image, heat):
    """``image`` uint8 (H, W, 3) RGB, ``heat`` in [0, 1] (H, W) → a JET heat map blended over the image."""
    colours = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8(0.5 * image + 0.5 * colours)


def label_rgb(label):
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[np.asarray(label, dtype=np.uint8)]


def montage(rows, titles, tile=112):
    """A grid of uint8 RGB tiles with a title row."""
    header = 16
    canvas = Image.new("RGB", (tile * len(titles), header + tile * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(titles):
        draw.text((col * tile + 3, 2), title[: tile // 6], fill="black")
    for row, tiles in enumerate(rows):
        for col, array in enumerate(tiles):
            canvas.paste(Image.fromarray(array).resize((tile, tile), Image.NEAREST), (col * tile, header + row * tile))
    return canvas


def render(voc_root, entries, classifiers=(), label_dirs=(), size=LOCALIZATION_SIZE, scales=LOCALIZATION_SCALES,
           tile=112):
    models = [(name, checkpoints.load_classifier(path)[0].eval()) for name, path in classifiers]
    dataset = voc.VOCDataset(voc_root, entries, eval_transform(size, resize_masks=False), masks=("label",))
    rows = []
    for index in range(len(dataset)):
        item = dataset[index]
        image = np.asarray(voc.load_image(voc.image_path(voc_root, item["id"])))
        height, width = item["size"]
        tiles = [image, label_rgb(item["label"].numpy())]
        for _, model in models:
            cam = multiscale_cam(model, item["image"][None], item["classes"][None], scales, size=(height, width))
            tiles.append(heat_overlay(image, cam[0].amax(dim=0).numpy()))
        for _, folder in label_dirs:
            tiles.append(label_rgb(voc.load_label(Path(folder) / f"{item['id']}.png")))
        rows.append(tiles)
    titles = ["image", "GT"] + [name for name, _ in classifiers] + [name for name, _ in label_dirs]
    return montage(rows, titles, tile)


def _pairs(items):
    return [tuple(item.split("=", 1)) if "=" in item else (Path(item).stem, item) for item in items]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc-root", required=True)
    parser.add_argument("--list", required=True)
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=CKPT")
    parser.add_argument("--labels", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--count", type=int, default=6, help="images (the first of the list)")
    parser.add_argument("--size", type=int, default=LOCALIZATION_SIZE)
    parser.add_argument("--scales", type=int, nargs="+", default=list(LOCALIZATION_SCALES))
    args = parser.parse_args(argv)
    entries = voc.read_list(args.list, voc_root=args.voc_root)[: args.count]
    with torch.no_grad():
        picture = render(args.voc_root, entries, _pairs(args.checkpoint), _pairs(args.labels), args.size, args.scales)
    atomic_write(args.out, lambda tmp: picture.save(tmp, format="PNG"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
