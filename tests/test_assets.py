"""`python -m utils.assets` against a local HTTP server on 127.0.0.1 that the tests start themselves."""

import dataclasses
import hashlib
import http.server
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

import models
from tests.conftest import PARITY, REPO, run_cli
from utils import assets, checkpoints, config


class Server:
    """Serves ``files`` (name -> bytes) with HEAD, GET and byte ranges. ``cut`` names files whose next GET
    sends half the body and then drops the connection; ``log`` records (method, path, Range header)."""

    def __init__(self, files):
        self.files, self.cut, self.log = dict(files), set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _head(self):
                name = self.path.lstrip("/")
                server.log.append((self.command, name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return None
                body = server.files[name]
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                return body[start:]

            def do_HEAD(self):
                self._head()

            def do_GET(self):
                body = self._head()
                if body is None:
                    return
                name = self.path.lstrip("/")
                if name in server.cut:
                    server.cut.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gets(self, name):
        return [entry for entry in self.log if entry[0] == "GET" and entry[1] == name]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def fetch_cli(tmp_path, server_url, *names, check=True, **options):
    args = ["-m", "utils.assets", "fetch", *names, "--home", tmp_path / "home", "--voc-root", tmp_path / "VOC2012",
            "--mirror", server_url]
    options.setdefault("no_progress", True)
    for key, value in options.items():
        if value is not False:
            args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return run_cli(*args, check=check)


def zip_bytes(members, links=()):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in links:  # a symlink: its target as the content, S_IFLNK in the Unix mode
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(members, links=()):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


def test_fetch_verifies_records_and_does_nothing_the_second_time(tmp_path):
    payload = bytes(range(256)) * 4000  # ~1 MB
    with Server({"DRS_learnable.pth": payload}) as server:
        result = fetch_cli(tmp_path, server.url, "drs-learnable", no_progress=False)
        final = tmp_path / "home" / "checkpoints" / "released" / "DRS_learnable.pth"
        assert final.read_bytes() == payload
        assert "100%" in result.stderr  # pooch's progress bar
        sha = hashlib.sha256(payload).hexdigest()
        assert f"no published hash: its SHA-256 {sha} is recorded" in result.stdout
        manifest = json.loads((final.parent / assets.MANIFEST).read_text())
        assert manifest["drs-learnable"]["sha256"] == sha and manifest["drs-learnable"]["size"] == len(payload)
        assert not (final.parent / ".downloads").exists()
        again = fetch_cli(tmp_path, server.url, "drs-learnable")
        assert "already present and verified" in again.stdout
        assert len(server.gets("DRS_learnable.pth")) == 1  # nothing downloaded the second time
        listing = run_cli("-m", "utils.assets", "list", "--home", tmp_path / "home").stdout
        assert re.search(rf"drs-learnable +{len(payload) / 1e6:.1f} MB +verified", listing)
        assert "refine-learnable" in listing and "missing" in listing and "needs --voc-root" in listing


def test_cut_download_continues_where_it_stopped(tmp_path):
    payload = bytes(range(251)) * 2000
    with Server({"Refine_DRS_learnable.pth": payload}) as server:
        server.cut.add("Refine_DRS_learnable.pth")
        # one attempt only: the cut ends the run with one line and leaves the partial download, never the final name
        failed = fetch_cli(tmp_path, server.url, "refine-learnable", check=False, retries=0)
        assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "cannot download" in failed.stderr
        released = tmp_path / "home" / "checkpoints" / "released"
        assert not (released / "Refine_DRS_learnable.pth").exists()
        part = released / ".downloads" / "Refine_DRS_learnable.pth.part"
        kept = part.stat().st_size  # what arrived, in whole chunks
        assert 0 < kept <= len(payload) // 2
        # the next run asks for the rest only
        result = fetch_cli(tmp_path, server.url, "refine-learnable")
        assert "continuing Refine_DRS_learnable.pth at" in result.stderr
        assert server.gets("Refine_DRS_learnable.pth")[-1][2] == f"bytes={kept}-"
        assert (released / "Refine_DRS_learnable.pth").read_bytes() == payload
        assert not part.exists()
        # within one run, a broken transfer is retried from where it stopped
        server.cut.add("Deeplabv2_pseudo_segmentation_labels.pth")
        server.files["Deeplabv2_pseudo_segmentation_labels.pth"] = payload[::-1]
        run = fetch_cli(tmp_path, server.url, "deeplabv2", retries=2)
        assert run.returncode == 0
        ranges = [g[2] for g in server.gets("Deeplabv2_pseudo_segmentation_labels.pth")]
        assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
        assert (released / "Deeplabv2_pseudo_segmentation_labels.pth").read_bytes() == payload[::-1]


def test_corrupted_file_is_refused_and_removed(tmp_path, monkeypatch):
    good = b"the first download" * 1000
    with Server({"Deeplabv3_pseudo_segmentation_labels.pth": good,
                 "VOCtrainval_11-May-2012.tar": tar_bytes({"VOCdevkit/VOC2012/JPEGImages/a.jpg": b"x"})}) as server:
        fetch_cli(tmp_path, server.url, "deeplabv3plus")
        final = tmp_path / "home" / "checkpoints" / "released" / "Deeplabv3_pseudo_segmentation_labels.pth"
        final.unlink()
        server.files["Deeplabv3_pseudo_segmentation_labels.pth"] = b"changed upstream" * 1000
        result = fetch_cli(tmp_path, server.url, "deeplabv3plus", check=False)
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert "expected " + hashlib.sha256(good).hexdigest() in result.stderr and "removed it" in result.stderr
        assert not final.exists() and not list(final.parent.glob(".downloads/*"))
        # a published hash (VOC's MD5) is checked before anything is extracted
        voc = fetch_cli(tmp_path, server.url, "voc2012", check=False)
        assert voc.returncode == 2 and "MD5" in voc.stderr and "6cd6e144f989b92b3379bac3b3de84fd" in voc.stderr
        assert not (tmp_path / "VOC2012" / "JPEGImages").exists()
        assert not list((tmp_path / "VOC2012").glob(".downloads/*"))
        verify = run_cli("-m", "utils.assets", "verify", "--home", tmp_path / "home", check=False)
        assert verify.returncode == 0, verify.stderr  # nothing present, nothing wrong
        final.write_bytes(b"tampered")
        tampered = run_cli("-m", "utils.assets", "verify", "--home", tmp_path / "home", check=False)
        assert tampered.returncode == 2 and "deeplabv3plus: CORRUPT" in tampered.stdout


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("member", ["../escaped.png", "/tmp/absolute_escape.png", "link"])
def test_archive_members_escaping_the_target_are_refused(tmp_path, kind, member):
    good = {"saliency_map/ok.png": b"fine"}
    make = zip_bytes if kind == "zip" else tar_bytes
    if member == "link":
        data = make(good, links=[("saliency_map/evil.png", "/etc/passwd")])
    else:
        data = make(good | {member: b"escaped"})
    with Server({"saliency_map.zip": data}) as server:
        result = fetch_cli(tmp_path, server.url, "saliency", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "refused, nothing extracted" in result.stderr
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "VOC2012" / "saliency_map").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name in ("escaped.png", "ok.png", "evil.png")]


def test_offline_is_one_line_naming_url_and_place(tmp_path):
    with Server({}) as server:
        url = server.url
    result = fetch_cli(tmp_path, url, "coco-init", check=False, retries=0)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    coco = tmp_path / "home" / assets.COCO_INIT_DIR / "deeplabv1_resnet101-coco.pth"
    assert f"{url}deeplabv1_resnet101-coco.pth" in result.stderr and f"place it at {coco}" in result.stderr
    unknown = run_cli("-m", "utils.assets", "fetch", "imagenet", check=False)
    assert unknown.returncode == 2 and "unknown asset 'imagenet'" in unknown.stderr


def test_assets_land_where_the_stages_read_them(tmp_path, parity_weights):
    """Stand-ins of every release (the released formats, from make_weights.py) and of the VOC archives, fetched
    into an empty folder, then read by the commands that consume them."""
    voc = PARITY / "voc"
    ids = ["pv04_coffee", "pv03_chelsea"]  # a train image for stages 1-3, a val image for DeepLab
    devkit = {f"VOCdevkit/VOC2012/{p.relative_to(voc)}": p.read_bytes() for sub in ("JPEGImages", "ImageSets",
              "SegmentationClass") for p in (voc / sub).rglob("*") if p.is_file()}
    devkit["VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"] = b"pv01_astronaut\npv04_coffee\n"
    files = {
        "VOCtrainval_11-May-2012.tar": tar_bytes(devkit),
        "SegmentationClassAug.zip": zip_bytes({f"SegmentationClassAug/{p.name}": p.read_bytes()
                                               for p in (voc / "SegmentationClassAug").iterdir()}),
        "saliency_map.zip": zip_bytes({p.name: p.read_bytes() for p in (voc / "saliency_map").iterdir()}),
    }
    for name, spec in [("DRS_learnable.pth", "drs_cls_learnable"), ("Refine_DRS_learnable.pth", "drs_refine"),
                       ("Deeplabv2_pseudo_segmentation_labels.pth", "deeplabv2_msc"),
                       ("Deeplabv3_pseudo_segmentation_labels.pth", "deeplabv3plus_resnet101"),
                       ("deeplabv1_resnet101-coco.pth", "deeplabv1_coco_init")]:
        files[name] = parity_weights(spec).read_bytes()
    root = tmp_path / "VOC2012"
    with Server(files) as server:
        result = fetch_cli(tmp_path, server.url, "segmentation-aug", "saliency", "released", "deeplab-released",
                           "coco-init", no_progress=False)
        assert "100%" in result.stderr
        # the devkit stand-in cannot carry VOC's published MD5: the same fetch, with the stand-in's MD5 published
        standin = dataclasses.replace(assets.BY_NAME["voc2012"], known_hash="md5:" + hashlib.md5(
            files["VOCtrainval_11-May-2012.tar"]).hexdigest())
        report = assets.fetch(standin, assets.Places(voc_root=root, home=tmp_path / "home"), mirror=server.url,
                              quiet=True)
    assert report == f"voc2012: {len(devkit)} files in {root} (downloaded from {server.url}VOCtrainval_11-May-2012.tar)"
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [assets.MANIFEST, "ImageSets", "JPEGImages", "SegmentationClass", "SegmentationClassAug", "saliency_map"])
    assert sorted(p.name for p in (root / "SegmentationClassAug").iterdir()) == sorted(
        p.name for p in (voc / "SegmentationClassAug").iterdir())
    chelsea = "saliency_map/pv03_chelsea.png"
    assert (root / chelsea).read_bytes() == (voc / chelsea).read_bytes()
    run_cli("-m", "utils.voc", "--voc-root", root)
    for name, (image_id, source) in {"one.txt": (ids[0], "train_aug_cls"), "one_val.txt": (ids[1], "val_cls")}.items():
        lines = (root / "lists" / f"{source}.txt").read_text().splitlines(keepends=True)
        (root / name).write_text("".join(line for line in lines if line.split()[0] == image_id))
    released = tmp_path / "home" / "checkpoints" / "released"
    run_cli("make_localization_maps.py", "--voc-root", root, "--list", root / "one.txt", "--checkpoint",
            released / "DRS_learnable.pth", "--out", tmp_path / "maps", "--device", "cpu")
    run_cli("make_pseudo_labels.py", "--voc-root", root, "--list", root / "one.txt", "--checkpoint",
            released / "Refine_DRS_learnable.pth", "--out", tmp_path / "labels", "--device", "cpu")
    assert (tmp_path / "labels" / "pv04_coffee.png").is_file()
    run_cli("DeepLab-V2-PyTorch/eval.py", "--config", "DeepLab-V2-PyTorch/configs/voc12.yaml", "--voc-root", root,
            "--list", root / "one_val.txt", "--checkpoint", released / "Deeplabv2_pseudo_segmentation_labels.pth",
            "--out", tmp_path / "v2", "--device", "cpu")
    assert (tmp_path / "v2" / "scores.json").is_file()
    run_cli("DeepLabV3Plus-Pytorch/eval.py", "--config", "DeepLabV3Plus-Pytorch/configs/voc.yaml", "--voc-root", root,
            "--list", root / "one_val.txt", "--checkpoint", released / "Deeplabv3_pseudo_segmentation_labels.pth",
            "--out", tmp_path / "v3p", "--device", "cpu")
    assert (tmp_path / "v3p" / "scores.json").is_file()
    # the COCO init is where configs/voc12.yaml's model.init_from points, relative to the repository (--home),
    # and loads into the network the V2 trainer builds
    init_from = config.load(REPO / "DeepLab-V2-PyTorch/configs/voc12.yaml")["model"]["init_from"]
    checkpoints.load_coco_init(models.build("deeplab_v2").base, tmp_path / "home" / init_from)
    status = run_cli("-m", "utils.assets", "verify", "segmentation-aug", "saliency", "released", "deeplab-released",
                     "coco-init", "--home", tmp_path / "home", "--voc-root", root)
    assert status.stdout.count(": verified") == 7


def run_sh(*args):
    return subprocess.run(["bash", "run.sh", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"PYTHON": sys.executable})


def test_run_sh_fetches_the_released_files_and_runs_from_them(tmp_path, parity_voc, parity_weights):
    """`run.sh --fetch --released ...` on the parity data: stage 3 from the released refinement network gives the
    original's pseudo labels, and the released DeepLab-V2 evaluates to the original's val labels."""
    files = {name: parity_weights(spec).read_bytes() for name, spec in [
        ("DRS_learnable.pth", "drs_cls_learnable"), ("Refine_DRS_learnable.pth", "drs_refine"),
        ("Deeplabv2_pseudo_segmentation_labels.pth", "deeplabv2_msc"),
        ("Deeplabv3_pseudo_segmentation_labels.pth", "deeplabv3plus_resnet101")]}
    common = ["--voc-root", parity_voc, "--fetch", "--assets-home", tmp_path / "home", "--device", "cpu"]
    with Server(files) as server:
        # the VOC images, labels and saliency are there already (not fetched by us): left as they are
        result = run_sh(*common, "--mirror", server.url, "--released", "checkpoints", "--out", tmp_path / "out")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "holds files this tool did not fetch: left as it is" in result.stdout
        expected = PARITY / "expected" / "D_pseudo_labels_s0"
        for png in expected.iterdir():
            made = parity_voc / "refined_pseudo_segmentation_labels" / png.name
            assert np.array_equal(np.array(Image.open(made)), np.array(Image.open(png))), png.name
        assert "pseudo labels" in (tmp_path / "out" / "pipeline.md").read_text()
        result = run_sh(*common, "--mirror", server.url, "--released", "deeplab", "--seg", "v2",
                        "--out", tmp_path / "out_v2")
        assert result.returncode == 0, result.stderr[-3000:]
    assert [entry[1] for entry in server.log if entry[0] == "GET"] == [
        "DRS_learnable.pth", "Refine_DRS_learnable.pth", "Deeplabv2_pseudo_segmentation_labels.pth",
        "Deeplabv3_pseudo_segmentation_labels.pth"]
    for png in (PARITY / "expected" / "E_deeplabv2_s0" / "label").iterdir():
        made = np.array(Image.open(tmp_path / "out_v2" / "eval" / "deeplab_v2" / png.name))
        assert np.array_equal(made, np.array(Image.open(png))), png.name
    table = (tmp_path / "out_v2" / "segmentation.md").read_text()
    assert "DeepLab-V2 + CRF (val)" in table and "pseudo labels" not in table


@pytest.mark.parametrize(("args", "message"), [
    (["--fetch"], "--fetch, --released and --mirror are for PASCAL VOC: add --voc-root DIR"),
    (["--voc-root", "/nowhere", "--released", "models"], "--released takes checkpoints, labels or deeplab"),
    (["--voc-root", "/nowhere", "--released", "labels", "--seg", "none"], "--released labels needs a network"),
])
def test_run_sh_refuses_bad_asset_options(args, message, tmp_path):
    result = run_sh(*args, "--out", tmp_path / "out")
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_imagenet_weights_go_to_the_torch_hub_cache_and_must_match_the_name_hash(tmp_path):
    """torchvision names its files after their SHA-256 (vgg16-397923af.pth): a file that does not match the
    prefix is refused and nothing is left in the hub cache, where torchvision's weights API would find it."""
    with Server({"vgg16-397923af.pth": b"not the ImageNet weights"}) as server:
        result = subprocess.run([sys.executable, "-m", "utils.assets", "fetch", "vgg16-imagenet", "--mirror",
                                 server.url, "--no-progress"], cwd=REPO, capture_output=True, text=True,
                                env=os.environ | {"TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "expected 397923af (the file name's hash prefix)" in result.stderr
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert str(hub / ".downloads" / "vgg16-397923af.pth.part") in result.stderr
    assert not (hub / "vgg16-397923af.pth").exists() and not list(hub.glob(".downloads/*"))
