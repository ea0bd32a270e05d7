"""Every file the project writes is written whole or not at all: a temporary file in the SAME directory, then
os.replace (atomic within one file system; a temporary file elsewhere, /tmp, would make the final move a copy
that a full disk can cut short, and its error would name the temporary file).

A failed write (a full disk, a read-only mount, a quota) leaves the file as it was, removes its temporary file
(the space it took is given back), and raises an OSError that names the file the user asked for, never the
temporary one. Torch-free: the population launcher's process and the sweep's table use it too.
"""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the whole file to `tmp` (a new file beside `path`); then it replaces `path`."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # a read-only or missing dir: named as the file asked for
        raise OSError(err.errno, err.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:  # a write() that fails (a full disk) names no file, or the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: Path, data: bytes | memoryview) -> None:
    """`data` as the whole of `path`, flushed to the disk before it replaces the old file (a crash right after
    leaves the new file or the old one, never an empty one)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)


def write_text_atomically(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path: Path, data: dict) -> None:
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")


def last_good(out_dir: Path) -> str:
    """The words that name a run's last good checkpoint in a failed write's line: checkpoints are written through
    here, so one that is there is whole."""
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    return f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved"
