"""Fetch what the pipeline needs from nothing: the VOC 2012 devkit, the DRS release, ImageNet weights.

    python -m utils.assets list   [--voc-root DIR]                 # every asset, its size, present and verified?
    python -m utils.assets fetch  NAME... | --all  [--voc-root DIR] [--mirror URL]
    python -m utils.assets verify [NAME...] [--voc-root DIR]       # recompute the hashes of what is present
    python -m utils.assets path   NAME...  [--voc-root DIR]        # where each asset goes (for scripts)

Every asset goes where the stage that reads it looks (README "From nothing to the paper's numbers"): the VOC
archives under ``--voc-root``, the released checkpoints under ``checkpoints/released/``, the COCO init where
``DeepLab-V2-PyTorch/configs/voc12.yaml`` points, ImageNet weights into the torch hub cache (where
torchvision's weights API finds them). A fetch

- downloads into ``<folder>/.downloads/<file>.part`` (never the final name) and continues an interrupted
  download where it stopped (an HTTP range request; a server without ranges makes it start again);
- checks the hash before anything is extracted or moved into place, and removes a file that fails. Where the
  release publishes no hash, the SHA-256 of the first download is recorded in ``drs-assets.json`` in the
  asset's folder, and every later verification compares against it (trust on first use: it proves the file has
  not changed since, not that the first download was the author's);
- extracts archives into a staging folder, refusing any member with an absolute path, a ``..`` component, a
  link or a device, and moves the result into place only when complete;
- does nothing for an asset that is present and verified, and takes a file placed by hand
  (``<folder>/<file>``, e.g. ``<voc_root>/SegmentationClassAug.zip``) instead of downloading it.
The transfer itself is pooch's (requests, progress bars).
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utils import cli
from utils.errors import UserError
from utils.io import file_digest, progress, save_json

REPO = Path(__file__).resolve().parents[1]
RELEASE_URL = "https://github.com/qjadud1994/DRS/releases/download/asset/"
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
MANIFEST = "drs-assets.json"
COCO_INIT_DIR = "DeepLab-V2-PyTorch/data/models/coco/deeplabv1_resnet101/caffemodel"  # configs/voc12.yaml
RELEASED_DIR = "checkpoints/released"


class AssetError(UserError):
    """A download, verification or extraction that failed; the message names the URL or file and the fix."""


@dataclass(frozen=True)
class Asset:
    name: str
    file: str            # the file name, on the release page and on a --mirror
    where: str           # "voc:<folder>" (archive extracted there), "repo:<folder>" (file), "hub" (torch hub cache)
    what: str
    url: str = ""        # default: RELEASE_URL + file
    known_hash: str = ""  # "md5:..." / "sha256:..." published with the file; "" = recorded on first download
    approx_size: str = "?"
    torchvision: str = ""  # "<model>.<weights enum member>" for ImageNet weights

    @property
    def is_archive(self):
        return self.file.endswith((".zip", ".tar", ".tar.gz", ".tgz"))


ASSETS = [
    Asset("voc2012", "VOCtrainval_11-May-2012.tar", "voc:.",
          "PASCAL VOC 2012 trainval: JPEGImages, Annotations, ImageSets, SegmentationClass",
          url=VOC_URL + "VOCtrainval_11-May-2012.tar", known_hash="md5:6cd6e144f989b92b3379bac3b3de84fd",
          approx_size="1.9 GB"),
    Asset("segmentation-aug", "SegmentationClassAug.zip", "voc:SegmentationClassAug",
          "the 10,582 train_aug + val label PNGs (SBD + VOC)"),
    Asset("saliency", "saliency_map.zip", "voc:saliency_map", "PoolNet saliency maps, the background cue"),
    Asset("pseudo-labels", "refined_pseudo_segmentation_labels.zip", "voc:refined_pseudo_segmentation_labels",
          "the released pseudo labels (stage 3's output)"),
    Asset("drs-learnable", "DRS_learnable.pth", f"repo:{RELEASED_DIR}", "stage-1 classifier, learnable DRS"),
    Asset("refine-learnable", "Refine_DRS_learnable.pth", f"repo:{RELEASED_DIR}", "stage-2 refinement network"),
    Asset("deeplabv2", "Deeplabv2_pseudo_segmentation_labels.pth", f"repo:{RELEASED_DIR}",
          "DeepLab-V2 trained on the released pseudo labels"),
    Asset("deeplabv3plus", "Deeplabv3_pseudo_segmentation_labels.pth", f"repo:{RELEASED_DIR}",
          "DeepLab-V3+ trained on the released pseudo labels"),
    Asset("coco-init", "deeplabv1_resnet101-coco.pth", f"repo:{COCO_INIT_DIR}",
          "DeepLab-V2's COCO initialisation (model.init_from of configs/voc12.yaml)"),
    Asset("vgg16-imagenet", "vgg16-397923af.pth", "hub", "ImageNet VGG-16 (stages 1 and 2)",
          approx_size="528 MB", torchvision="vgg16.IMAGENET1K_V1"),
    Asset("resnet101-imagenet", "resnet101-63fe2227.pth", "hub", "ImageNet ResNet-101 (DeepLab-V3+)",
          approx_size="171 MB", torchvision="resnet101.IMAGENET1K_V1"),
]
BY_NAME = {asset.name: asset for asset in ASSETS} | {asset.file: asset for asset in ASSETS}

# What each part of run.sh reads (run.sh --fetch fetches these groups).
GROUPS = {
    "voc": ["voc2012", "segmentation-aug", "saliency"],
    "train": ["vgg16-imagenet"],
    "released": ["drs-learnable", "refine-learnable"],
    "released-labels": ["pseudo-labels"],
    "v2": ["coco-init"],
    "v3p": ["resnet101-imagenet"],
    "deeplab-released": ["deeplabv2", "deeplabv3plus"],
}


@dataclass
class Places:
    """Where the assets live: the VOC root, the folder ``repo:`` paths are relative to, the torch hub folder."""
    voc_root: Path | None = None
    home: Path = REPO
    hub: Path | None = None

    def folder(self, asset):
        if asset.where == "hub":
            if self.hub is not None:
                return self.hub / "checkpoints"
            import torch

            return Path(torch.hub.get_dir()) / "checkpoints"
        kind, folder = asset.where.split(":", 1)
        if kind == "repo":
            return self.home / folder
        if self.voc_root is None:
            raise AssetError(f"{asset.name} goes under the VOC root: pass --voc-root DIR (the VOC2012 folder)")
        return self.voc_root / folder

    def target(self, asset):
        """The final path: the file, or the folder an archive is extracted to."""
        folder = self.folder(asset)
        return folder if asset.is_archive else folder / asset.file

    def root(self, asset):
        """The folder holding the asset's manifest, its downloads and a file placed there by hand."""
        folder = self.folder(asset)  # raises for a VOC asset without a VOC root
        return self.voc_root if asset.where.startswith("voc:") else folder


def url_of(asset, mirror=None):
    if mirror:
        return mirror.rstrip("/") + "/" + asset.file
    if asset.torchvision:
        return weights_enum(asset).url
    return asset.url or RELEASE_URL + asset.file


def weights_enum(asset):
    import torchvision

    model, member = asset.torchvision.split(".")
    return torchvision.models.get_model_weights(model)[member]


# ---------------------------------------------------------------------------------------------------- manifest

@contextlib.contextmanager
def locked(folder, quiet=False):
    """Hold an exclusive lock on ``folder`` (created): fetches into one folder run one after the other."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not quiet:
                print(f"waiting for another fetch into {folder} to finish", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_manifest(root):
    path = root / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise AssetError(f"{path} is unreadable ({error}); delete it and fetch again") from None


def record(root, name, entry):
    """Add one asset's entry to the manifest of ``root`` (the caller holds the folder's lock)."""
    manifest = read_manifest(root)
    manifest[name] = entry
    save_json(root / MANIFEST, manifest)


# ------------------------------------------------------------------------------------------------ verification

def expected_digest(asset, entry):
    """``(algorithm, hex digest or prefix, source)`` the file must match, or None when nothing is known."""
    if asset.known_hash:
        algorithm, value = asset.known_hash.split(":")
        return algorithm, value, "published"
    if asset.torchvision:  # torchvision names its files <model>-<first hex digits of the SHA-256>.pth
        return "sha256", re.search(r"-([0-9a-f]+)\.", asset.file).group(1), "the file name's hash prefix"
    if entry and entry.get("sha256"):
        return "sha256", entry["sha256"], f"recorded in {MANIFEST} on first download"
    return None


def check_file(asset, path, entry):
    """Raise AssetError when ``path`` does not match what is known of ``asset``; return its SHA-256."""
    sha256 = file_digest(path)
    expected = expected_digest(asset, entry)
    if expected is not None:
        algorithm, value, source = expected
        actual = sha256 if algorithm == "sha256" else file_digest(path, algorithm)
        if not actual.startswith(value):
            raise AssetError(f"{path} has {algorithm.upper()} {actual}, expected {value} ({source})")
    return sha256


def count_files(folder, entries):
    return sum(1 for name in entries for p in [folder / name] for f in ([p] if p.is_file() else p.rglob("*"))
               if f.is_file())


def extracted_by_hand(asset, places):
    """An archive's folder that holds files this tool did not record (extracted by hand, or another copy)."""
    folder = places.folder(asset)
    probe = folder / "JPEGImages" if asset.where == "voc:." else folder
    return probe.is_dir() and any(probe.iterdir())


def status(asset, places):
    """One line of ``list``: missing / verified / what is wrong."""
    try:
        target, root = places.target(asset), places.root(asset)
    except AssetError:
        return "missing (needs --voc-root)"
    entry = read_manifest(root).get(asset.name) if root.is_dir() else None
    partial = root / ".downloads" / f"{asset.file}.part"
    missing = f"missing (partial download: {partial.stat().st_size / 1e6:.1f} MB)" if partial.exists() else "missing"
    if asset.is_archive:
        if not entry:
            return "present, unverified (not fetched by this tool)" if extracted_by_hand(asset, places) else missing
        found = count_files(places.folder(asset), entry["entries"])
        if found != entry["files"]:
            return f"INCOMPLETE: {found} of the archive's {entry['files']} files"
        return f"verified ({entry['files']} files from an archive of SHA-256 {entry['sha256'][:12]}...)"
    if not target.is_file():
        return missing
    if expected_digest(asset, entry) is None:
        return "present, unverified (no hash known: fetch records it)"
    try:
        check_file(asset, target, entry)
    except AssetError as error:
        return f"CORRUPT: {error}"
    return "verified"


# --------------------------------------------------------------------------------------------------- download

def download(url, part, quiet=False, retries=3, timeout=60):
    """Download ``url`` into ``part``, continuing a partial file where the server allows ranges; retries a
    broken transfer from where it stopped."""
    import pooch
    import requests

    for attempt in range(retries + 1):
        try:
            head = requests.head(url, allow_redirects=True, timeout=timeout)
            if head.status_code != 200:
                raise AssetError(f"{url} answered HTTP {head.status_code}")
            total = int(head.headers.get("content-length", 0)) or None
            offset = part.stat().st_size if part.exists() else 0
            ranges = head.headers.get("accept-ranges", "").lower() == "bytes"
            if offset and (not ranges or total is None or offset > total):
                offset = 0  # cannot continue: start again
                part.unlink()
            if total is not None and offset == total:
                return
            if offset:
                print(f"continuing {part.name[:-5]} at {offset / 1e6:.1f} of {total / 1e6:.1f} MB", file=sys.stderr)
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            downloader = pooch.HTTPDownloader(progressbar=not quiet, chunk_size=1 << 16, headers=headers,
                                              timeout=timeout)
            with open(part, "ab") as out:
                downloader(url, out, None)
            size = part.stat().st_size
            if total is not None and size != total:
                raise requests.exceptions.ChunkedEncodingError(f"got {size} of {total} bytes")
            return
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError) as error:
            if attempt == retries:
                raise AssetError(f"cannot download {url} ({type(error).__name__}); {_by_hand(part)}") from None
            time.sleep(min(2 ** attempt, 10) * float(os.environ.get("DRS_ASSETS_BACKOFF", "1")))
        except requests.exceptions.RequestException as error:  # HTTP errors, bad URLs: no point retrying
            raise AssetError(f"cannot download {url} ({error}); {_by_hand(part)}") from None


def _by_hand(part):
    kept = part.exists() and part.stat().st_size > 0
    if part.exists() and not kept:
        part.unlink()
    with contextlib.suppress(OSError):
        part.parent.rmdir()  # only when empty
    return (f"offline? download it by hand and place it at {part.parent.parent / part.name[:-5]}, then run the "
            "fetch again" + (f" (the partial download in {part} is continued next time)" if kept else ""))


# ------------------------------------------------------------------------------------------------- extraction

def _member_path(name, archive):
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise AssetError(f"{archive} holds a member whose path leaves the target folder ({name!r}): refused, "
                         "nothing extracted")
    return path


def archive_members(archive):
    """``[(path, is_dir, open_fn)]`` of a zip or tar after checking every member: no absolute path, no ``..``,
    no link or device (raises before anything is written)."""
    members = []
    if zipfile.is_zipfile(archive):
        handle = zipfile.ZipFile(archive)
        for info in handle.infolist():
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip was written without Unix modes
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise AssetError(f"{archive} holds a link or special file ({info.filename!r}): refused, "
                                 "nothing extracted")
            members.append((_member_path(info.filename, archive), info.is_dir(),
                            lambda info=info: handle.open(info)))
        return handle, members
    try:
        handle = tarfile.open(archive)
    except tarfile.TarError:
        raise AssetError(f"{archive} is neither a zip nor a tar archive: remove it and fetch again") from None
    for info in handle.getmembers():
        if not (info.isfile() or info.isdir()):
            raise AssetError(f"{archive} holds a link or special file ({info.name!r}): refused, nothing extracted")
        members.append((_member_path(info.name, archive), info.isdir(),
                        lambda info=info: handle.extractfile(info)))
    return handle, members


def content_root(staging):
    """Descend through single top-level folders (``VOCdevkit/VOC2012/``, ``SegmentationClassAug/``)."""
    root = staging
    while True:
        entries = [p for p in root.iterdir() if p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            return root


def extract(archive, asset, folder, staging, quiet=False):
    """Extract into ``staging``, then move the content into ``folder`` (entries of the same name replaced).
    Returns ``(entries, files)`` for the manifest."""
    handle, members = archive_members(archive)
    if staging.exists():  # a killed run's (we hold the folder's lock)
        shutil.rmtree(staging)
    try:
        with handle:
            for path, is_dir, open_member in progress(members, quiet, desc=f"extracting {asset.file}", unit="file"):
                out = staging.joinpath(*path.parts)
                if is_dir:
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with open_member() as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        staging.mkdir(parents=True, exist_ok=True)
        content = content_root(staging)
        entries = sorted(p.name for p in content.iterdir() if p.name != "__MACOSX")
        files = count_files(content, entries)
        folder.mkdir(parents=True, exist_ok=True)
        for name in entries:
            final = folder / name
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            elif final.exists() or final.is_symlink():
                final.unlink()
            os.replace(content / name, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entries, files


# ------------------------------------------------------------------------------------------------------ fetch

def fetch(asset, places, mirror=None, quiet=False, retries=3, keep_archive=False):
    """Make ``asset`` present and verified; returns a one-line report."""
    root, target = places.root(asset), places.target(asset)
    with locked(root, quiet):
        state = status(asset, places)
        if state.startswith("verified"):
            return f"{asset.name}: already present and verified ({target})"
        if state.startswith("present, unverified (not fetched"):
            return (f"{asset.name}: {places.folder(asset)} already holds files this tool did not fetch: left as it "
                    "is (delete them to fetch the archive)")
        entry = read_manifest(root).get(asset.name)
        downloads = root / ".downloads"
        part = downloads / f"{asset.file}.part"
        by_hand = root / asset.file  # a file placed by hand (for a plain file, its final name)
        if by_hand.is_file():
            source, how = by_hand, "placed by hand"
        else:
            url = url_of(asset, mirror)
            downloads.mkdir(exist_ok=True)
            download(url, part, quiet=quiet, retries=retries)
            source, how = part, f"downloaded from {url}"
        try:
            sha256 = check_file(asset, source, entry)
        except AssetError as error:
            source.unlink()
            raise AssetError(f"{error}: removed it; the download was cut or corrupted, or the file changed "
                             "upstream: fetch again (or from another --mirror)") from None
        note = ""
        if expected_digest(asset, entry) is None:
            note = f"; no published hash: its SHA-256 {sha256} is recorded in {root / MANIFEST} and checked from now on"
        facts = {"file": asset.file, "sha256": sha256, "size": source.stat().st_size, "source": how}
        if asset.is_archive:
            entries, files = extract(source, asset, places.folder(asset), downloads / f"{asset.name}.staging", quiet)
            record(root, asset.name, facts | {"entries": entries, "files": files})
            if keep_archive and source == part:
                os.replace(part, downloads / asset.file)
            elif source == part:
                part.unlink()
            report = f"{asset.name}: {files} files in {places.folder(asset)} ({how}{note})"
        else:
            os.replace(source, target)
            record(root, asset.name, facts)
            report = f"{asset.name}: {target} ({how}{note})"
        with contextlib.suppress(OSError):
            downloads.rmdir()  # only when empty
    return report


# --------------------------------------------------------------------------------------------------------- CLI

def select(names, all_assets=False):
    if all_assets:
        return list(ASSETS)
    chosen = []
    for name in names:
        for item in GROUPS.get(name, [name]):
            if item not in BY_NAME:
                raise AssetError(f"unknown asset {item!r}: one of {', '.join(a.name for a in ASSETS)} "
                                 f"or a group ({', '.join(GROUPS)})")
            if BY_NAME[item] not in chosen:
                chosen.append(BY_NAME[item])
    return chosen


def build_parser():
    p = cli.parser(__doc__)
    p.parse_args = p.parse_intermixed_args  # names may follow the options: fetch --voc-root DIR voc released
    p.add_argument("command", choices=["list", "fetch", "verify", "path"])
    p.add_argument("names", nargs="*", help="assets or groups (list shows them)")
    p.add_argument("--all", action="store_true", help="fetch: every asset (about 3 GB)")
    p.add_argument("--voc-root", type=Path, default=None, help="the VOC2012 folder the VOC assets go to")
    p.add_argument("--mirror", default=None, help="fetch the same file names from this base URL instead")
    p.add_argument("--home", type=Path, default=REPO,
                   help="the folder checkpoints/released/ and DeepLab-V2-PyTorch/data/ are under (default: this "
                        "repository)")
    p.add_argument("--retries", type=int, default=3, help="attempts to continue a broken download (default 3)")
    p.add_argument("--keep-archives", action="store_true", help="keep each archive after extracting it")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args):
    places = Places(voc_root=args.voc_root, home=args.home)
    if args.command == "list":
        for asset in ASSETS:
            print(f"{asset.name:19} {_size(asset, places):>9}  {status(asset, places)}\n"
                  f"{'':31}{asset.what}\n{'':31}-> {_where(asset, places)}")
        print("groups: " + "; ".join(f"{g} = {', '.join(v)}" for g, v in GROUPS.items()))
        return 0
    assets = select(args.names, args.all)
    if args.command == "path":
        for asset in assets:
            print(places.target(asset))
        return 0
    if args.command == "fetch":
        if not assets:
            raise AssetError("fetch what? name assets or groups (python -m utils.assets list), or --all")
        for asset in assets:
            print(fetch(asset, places, mirror=args.mirror, quiet=args.no_progress, retries=args.retries,
                        keep_archive=args.keep_archives), flush=True)
        return 0
    # verify: the named assets must be verified; without names, every asset that is present
    bad = []
    for asset in assets or ASSETS:
        state = status(asset, places)
        if assets or not state.startswith("missing"):
            print(f"{asset.name}: {state}")
            if not state.startswith("verified"):
                bad.append(asset.name)
    if bad:
        raise AssetError(f"not verified: {', '.join(bad)} (python -m utils.assets fetch {' '.join(bad)})")
    return 0


def _where(asset, places):
    try:
        return str(places.target(asset))
    except AssetError:
        return "<voc_root>/" + asset.where.split(":", 1)[1].strip(".")


def _size(asset, places):
    """The recorded size of a fetched asset, else the approximate one."""
    try:
        entry = read_manifest(places.root(asset)).get(asset.name) if places.root(asset).is_dir() else None
    except AssetError:
        entry = None
    return f"{entry['size'] / 1e6:.1f} MB" if entry else asset.approx_size


if __name__ == "__main__":
    cli.main(run, build_parser())
