"""Crash consistency: what a killed process leaves behind is never read as finished, and is cleaned up."""

import os
import signal
import stat
import subprocess
import sys

from tests.conftest import REPO
from utils.io import save_json

WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
from utils.io import atomic_write
def slow(tmp):
    open(tmp, "w").write("half")
    print("writing", flush=True)
    time.sleep(60)
atomic_write({path!r}, slow)
"""


def test_a_killed_write_leaves_no_file_and_its_temporary_is_removed_next_time(tmp_path):
    target = tmp_path / "scores.json"
    save_json(target, {"old": 1})
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(target))],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    orphans = list(tmp_path.glob(".scores.json.*.tmp"))
    assert len(orphans) == 1 and orphans[0].read_text() == "half"
    assert '"old": 1' in target.read_text()  # the previous version stays under the final name
    save_json(target, {"new": 2})
    assert '"new": 2' in target.read_text() and not list(tmp_path.glob(".scores.json.*.tmp"))


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "scores.json"
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(target))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        save_json(target, {"mine": 1})
        assert len(list(tmp_path.glob(".scores.json.*.tmp"))) == 1  # the other process is still writing
    finally:
        writer.kill()
        writer.wait()


def test_atomic_files_get_the_mode_of_any_new_file(tmp_path):
    path = save_json(tmp_path / "a.json", {})
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's 0600
