"""Reading a data file: one item per line, checked before and while reading, so that a bad file is one line of
error, never a hang, a memory blow-up or a traceback."""

import codecs
import hashlib
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from makemore_lab.errors import UserError

BOUNDARY = "."  # index 0: marks both the start and the end of an item, as in the lectures
DEFAULT_MAX_BYTES = 4 * 2**30  # data.max_bytes: refused before reading, so /dev/zero-sized mistakes fail fast

# Longest first: a UTF-32-LE mark starts with the UTF-16-LE one.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def builtin_names_path() -> Path:
    """makemore's names.txt (32,033 names) shipped inside the package, so training needs no download."""
    return Path(str(resources.files("makemore_lab") / "datasets" / "names.txt"))


@dataclass(frozen=True)
class DataFile:
    """A data file's items, in file order, and the SHA-256 of its bytes (what a checkpoint records)."""

    path: Path
    items: list[str]
    sha256: str


def read_bytes(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The file's bytes, refusing before reading what cannot be a data file: a directory, a FIFO or device (it
    could block forever or never end), or a file over max_bytes."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"data file not found: {path}") from None
    except OSError as err:
        raise UserError(f"cannot read data file {path}: {err.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"data path is a directory, not a file: {path}")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"data path {path} is not a regular file (a FIFO, device or socket): give a file of items")
    too_big = f"data file {path} is larger than data.max_bytes={max_bytes:,} bytes: raise data.max_bytes if you mean it"
    if info.st_size > max_bytes:
        raise UserError(too_big)
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)  # bounded even if the file grows while we read it
    except OSError as err:
        raise UserError(f"cannot read data file {path}: {err.strerror}") from None
    if len(raw) > max_bytes:
        raise UserError(too_big)
    return raw


def decode(raw: bytes, path: Path) -> str:
    """UTF-8 text, a UTF-8 byte-order mark dropped (Windows editors write one); UTF-16/32 named as such."""
    for mark, encoding in BYTE_ORDER_MARKS:
        if raw.startswith(mark):
            raise UserError(
                f"data file {path} is {encoding} text (it starts with a {encoding} byte-order mark); "
                f"convert it to UTF-8, e.g. iconv -f {encoding} -t UTF-8"
            )
    if b"\x00" in raw:
        raise UserError(f"data file {path} looks binary (it contains NUL bytes); expected text, one item per line")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"data file {path} is not UTF-8 text (bad byte at offset {err.start})") from None


def split_lines(text: str) -> list[str]:
    """Items: lines split on "\\n" (so also "\\r\\n") only, stripped, blank ones dropped.

    Not str.splitlines(), which also splits at \\x0c, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029: inside an item
    those are characters of the item (a form feed in a SMILES file is a bug to see, not a silent new item).
    """
    return [item for item in (line.strip() for line in text.split("\n")) if item]


def read_data_file(path: str | Path | None, max_bytes: int = DEFAULT_MAX_BYTES) -> DataFile:
    """Read and check one item per line. None means the shipped names.txt."""
    path = builtin_names_path() if path is None else Path(path)
    raw = read_bytes(path, max_bytes)
    sha256 = hashlib.sha256(raw).hexdigest()
    text = decode(raw, path)
    del raw
    items = split_lines(text)
    if not items:
        raise UserError(f"data file {path} has no items (it is empty or only blank lines)")
    if BOUNDARY in text:  # one C-level scan; '.' is no whitespace, so it is inside some item
        bad = next(item for item in items if BOUNDARY in item)
        raise UserError(f"data item {bad!r} contains {BOUNDARY!r}, which the vocabulary reserves for start/end")
    return DataFile(path, items, sha256)


def read_items(path: str | Path | None, max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
    """Read one item per line; blank lines and surrounding whitespace are ignored. None means names.txt."""
    return read_data_file(path, max_bytes).items


def line_number(path: Path, item: str) -> int:
    """The 1-based line of `item` in the file (for error messages only: it reads the file again)."""
    text = decode(read_bytes(path), path)
    return next(n for n, line in enumerate(text.split("\n"), 1) if line.strip() == item)
