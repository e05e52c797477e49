"""Synchronised BN under a 2-process CPU torchrun matches one process on the same global batch."""

import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from tests.conftest import REPO


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 1))


def global_batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 12, 12, generator=generator), torch.randint(0, 4, (8, 12, 12), generator=generator)


def step(net, images, labels):
    """One SGD step on the mean cross-entropy; returns the loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = F.cross_entropy(net(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def test_two_process_sync_bn_equals_one_process(tmp_path):
    single = small_net()
    images, labels = global_batch()
    single_loss = step(single, images, labels)

    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "sync_bn_worker.py"), str(out), str(REPO)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    distributed = torch.load(out, weights_only=True)
    assert abs(distributed["loss"] - single_loss) < 1e-5
    for key, value in single.state_dict().items():
        torch.testing.assert_close(distributed["state"][key].float(), value.float(), atol=1e-5, rtol=1e-4)


def test_sync_bn_is_plain_bn_outside_a_process_group():
    from utils.sync_bn import convert_sync_batchnorm

    plain = small_net()
    synced = convert_sync_batchnorm(small_net())
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(synced(x), plain(x))
    assert type(synced[1]).__name__ == "SyncBatchNorm2d"
