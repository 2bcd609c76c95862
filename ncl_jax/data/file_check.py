"""Bad image files found before any compute: a cheap header check of every listed file (run
when a dataset is opened), a full decode of every file (`ncl-check-dataset`), both in threads
with a progress bar, and what `dataset.on_bad_file` does with the files they find.

Pillow reads the headers (it is the library that reads an image's format and size without
decoding it: `Image.open` is lazy). TensorFlow decodes (`sources.decode_image`, passed in as
`decode`), so Pillow's word is never final: a file whose header Pillow cannot read, whose
format TensorFlow may not decode, or that does not end as a complete file of its format ends
(a truncated download) is decoded, and only a failed decode makes it bad. The header check
is thus never stricter than the pipeline; a file it passes can still hold corrupt data inside,
which the pipeline then names when it meets it (`ncl_jax/data/pipeline.py`). No TensorFlow
here, so `config/validation` can import ON_BAD_FILE.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
from collections.abc import Callable, Sequence

from PIL import Image
from tqdm import tqdm

from ncl_jax.errors import DataError

# dataset.on_bad_file: "error" stops with the first bad file's name, "skip" leaves them out.
ON_BAD_FILE = ("error", "skip")
# Written into the workdir under on_bad_file=skip: one bad file per line, with its reason.
BAD_FILES_NAME = "bad_files.txt"
# Threads per check: a header read waits on the disk or the network, not on a core.
THREADS = 32
# Lists at least this long show a progress bar (count, rate, ETA) while they are checked.
PROGRESS_FROM = 2_000

# What TensorFlow's decode_image reads, by Pillow's format names (MPO: cameras' JPEGs).
DECODED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")
# The last bytes of a complete file of each format; a file that ends otherwise is decoded.
_ENDINGS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82", "GIF": b";"}

# File bytes -> (height, width) of the decoded image; ValueError(TensorFlow's message) when
# the bytes do not decode.
Decoder = Callable[[bytes], tuple[int, int]]
# (height, width) -> why the split's views cannot take an image of that size, or None.
SizeRule = Callable[[int, int], str | None]


@dataclasses.dataclass(frozen=True)
class BadFile:
    """One bad file and why, in words that follow its path ("is empty (0 bytes)")."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} {self.reason}"


def header_problem(path: str, *, decode: Decoder, size_rule: SizeRule) -> str | None:
    """Why `path` cannot be trained on, from its size, header and last bytes (a decode only
    when those leave doubt, see the module docstring); None when it looks whole."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return "is empty (0 bytes)"
            try:
                with Image.open(f) as image:
                    fmt, (width, height) = image.format, image.size
            except Exception:  # Pillow raises many types for unreadable headers; decode decides
                fmt = None
            ending = _ENDINGS.get(fmt)
            if ending is not None and size >= len(ending):
                f.seek(-len(ending), os.SEEK_END)
                if f.read() == ending:
                    return size_rule(height, width)
            f.seek(0)
            data = f.read()
    except OSError as err:
        return _unreadable(err)
    return _decoded_problem(data, decode, size_rule)


def decode_problem(path: str, *, decode: Decoder, size_rule: SizeRule) -> str | None:
    """Why `path` cannot be trained on, from a full decode; None when it decodes and fits."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return _unreadable(err)
    if not data:
        return "is empty (0 bytes)"
    return _decoded_problem(data, decode, size_rule)


def _unreadable(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "does not exist"
    return f"cannot be read ({err.strerror or err})"


def _decoded_problem(data: bytes, decode: Decoder, size_rule: SizeRule) -> str | None:
    try:
        height, width = decode(data)
    except ValueError as err:
        return _undecodable(data, str(err))
    return size_rule(height, width)


def _undecodable(data: bytes, message: str) -> str:
    """The reason for bytes that do not decode, named by what Pillow makes of their header."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
    except Exception:  # a header Pillow cannot finish reading: is it one of a format?
        fmt = _signature_format(data)
        if fmt is None:
            return f"is not an image ({message})"
        return f"is a truncated or corrupt {fmt} file ({message})"
    if fmt not in DECODED_FORMATS:
        return f"is a {fmt} image, which TensorFlow does not decode; convert it to JPEG or PNG"
    return f"is a truncated or corrupt {fmt} file ({message})"


def _signature_format(data: bytes) -> str | None:
    """The format whose signature `data` starts with, by Pillow's registered format checks
    (`Image.register_open`'s `accept`), or None."""
    Image.init()
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        if accept is not None and accept(data[:16]):
            return fmt
    return None


def find_bad_files(
    paths: Sequence[str], problem: Callable[[str], str | None], *, what: str, threads: int = THREADS
) -> list[BadFile]:
    """`problem(path)` for every path, in `threads` threads (a progress bar with ETA on stderr
    for PROGRESS_FROM paths or more); the bad ones in the order of `paths`. `what` names the
    list in the progress bar ("the training split")."""
    workers = max(1, min(threads, len(paths)))
    with (
        concurrent.futures.ThreadPoolExecutor(workers) as pool,
        tqdm(
            total=len(paths),
            desc=f"checking {what}",
            unit=" files",
            disable=len(paths) < PROGRESS_FROM,
            mininterval=2.0,
        ) as bar,
    ):
        bad = []
        for path, reason in zip(paths, pool.map(problem, paths), strict=True):
            bar.update()
            if reason is not None:
                bad.append(BadFile(str(path), reason))
    return bad


def refusal(bad: Sequence[BadFile], what: str) -> DataError:
    """The one-line error for on_bad_file=error: the first bad file, the count, the fixes."""
    count = f"{len(bad)} bad file{'s' if len(bad) > 1 else ''}"
    return DataError(
        f"{bad[0]}; {count} in {what}: ncl-check-dataset lists them all; fix or remove them, "
        "or leave them out with --config.dataset.on_bad_file=skip."
    )


def write_list(path: str, bad: Sequence[BadFile]) -> None:
    """Writes one bad file per line (path, a tab, the reason) to `path`, replacing it whole."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(f"{b.path}\t{b.reason}\n" for b in bad)
    os.replace(tmp, path)
