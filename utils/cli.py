"""The command line of every entry point: one spelling per option, one way to report the user's errors.

Shared options: ``--config`` (YAML), ``--set KEY=VALUE`` (repeatable config override), ``--voc-root`` (the
VOC2012 folder), ``--out`` (the output folder), ``--device`` (auto, cpu, cuda, cuda:N), ``--resume`` (a
checkpoint or ``auto``), ``--labels`` (a folder of label PNGs), ``--no-progress``.
"""

import argparse
import errno
import os
import sys

from utils.errors import UserError

EXIT_USER_ERROR = 2  # argparse's own exit status for a bad command line
# the machine's answers a user can act on (a path through a file, no permission, a full or read-only disk)
FILESYSTEM_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
                     errno.EISDIR, errno.ENAMETOOLONG}


def parser(description, **kwargs):
    """An argument parser that shows the module's docstring as its help text."""
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   **kwargs)


def add_device(p):
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def training_parser(description, default_config, labels=False):
    """The command line of the four trainers."""
    p = parser(description)
    p.add_argument("--config", default=str(default_config), help="YAML config (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=0.01 (repeatable)")
    p.add_argument("--voc-root", default=None, help="the VOC2012 folder (overrides the config's)")
    p.add_argument("--out", default=None, help="output folder (overrides the config's)")
    if labels:
        p.add_argument("--labels", default=None,
                       help="the training labels: a folder of label PNGs, under the VOC root or absolute")
    p.add_argument("--resume", default=None, help="a checkpoint to continue from, or 'auto' for <out>/last.pth")
    add_device(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs and batch jobs)")
    return p


def main(run, arg_parser, argv=None):
    """Parse ``argv`` and return ``run(args)``; the project's errors end the process with one line on stderr
    and exit status 2, never a traceback."""
    args = arg_parser.parse_args(argv)
    try:
        return run(args)
    except UserError as error:
        fail(user_message(error))
    except OSError as error:
        if error.errno not in FILESYSTEM_ERRORS:
            raise
        where = error.filename if error.filename is not None else "a file"
        fail(f"cannot write or read {where}: {error.strerror} (check the path, its permissions and the free space)")


def user_message(error):
    """The error's message in one line. An error raised in a DataLoader worker comes back with the worker's
    traceback in its text; only the original message (the traceback's last line) is kept."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(f"{type(error).__module__}.") else last
    return " ".join(text.split()) or type(error).__name__


def fail(message):
    """One line on stderr (prefixed with the process's rank under torchrun) and exit status 2."""
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"{rank}error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
