import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO / "tests" / "fixtures" / "parity"
sys.path.insert(0, str(REPO))


def run_cli(*args, check=True):
    """Run one of the project's command-line tools the way a user does, from the repository root."""
    result = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def entry_point(script):
    """The ``main`` of a script, imported from its file (the DeepLab folders are not Python packages)."""
    spec = importlib.util.spec_from_file_location(f"entry_{str(script).replace('/', '_')[:-3]}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="session")
def parity_weights(tmp_path_factory):
    """``(spec, seed=0) -> path`` of checkpoints written by the parity fixtures' make_weights.py."""
    out = tmp_path_factory.mktemp("parity_weights")
    made = {}

    def make(spec, seed=0):
        if (spec, seed) not in made:
            path = out / f"{spec}_s{seed}.pth"
            run_cli(PARITY / "make_weights.py", PARITY / "specs" / f"{spec}.json", path, "--seed", str(seed))
            made[spec, seed] = path
        return made[spec, seed]

    return make


@pytest.fixture()
def parity_voc(tmp_path):
    """A writable copy of the 6-image parity dataset (a VOC2012-style folder)."""
    root = tmp_path / "VOC2012"
    shutil.copytree(PARITY / "voc", root)
    return root
