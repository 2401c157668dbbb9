"""Writing output files safely: check the destination before the work starts, then write to a
temporary file beside it and rename, so a failed or interrupted write never leaves half a file
and never truncates a file that is also the input."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written: a folder, a read-only place, a wrong file type."""


def check_output_file(path: str | Path, what: str) -> Path:
    """`path` as a Path, after checking that a file can be created there: it is not a folder, and
    its folder exists (or can be created) and takes a new file. `what` names the input in the
    error ("--out", "data.prompts_file")."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file name inside it, e.g. {path / 'out'}"
                              f"{path.suffix or ''}")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputPathError(f"{what} {path}: cannot write in {folder} ({reason}); choose a folder you can "
                              "write to") from None
    return path


def image_format(path: str | Path, what: str) -> str:
    """The Pillow format that `path`'s extension names (PNG for .png, JPEG for .jpg, ...)."""
    from PIL import Image

    Image.init()
    ext = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        got = f"got {ext!r}" if ext else "it has none"
        raise OutputPathError(f"{what} {path} does not end in an image extension Pillow can write ({got}); "
                              "use a name like samples.png or samples.jpg")
    return fmt


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to a temporary file in `path`'s folder, then rename it over `path`."""
    return atomic_write(Path(path), lambda f: f.write(text.encode(encoding)))


def atomic_save_image(image, path: str | Path, fmt: str | None = None) -> Path:
    """Save a PIL image through a temporary file and a rename."""
    path = Path(path)
    fmt = fmt or image_format(path, "image file")
    return atomic_write(path, lambda f: image.save(f, format=fmt))


def atomic_write(path: str | Path, write) -> Path:
    """write(f) into a temporary file in `path`'s folder (f: a binary file), then rename it over
    `path`: a reader never sees half a file, and a failed write leaves no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # same folder: the rename stays on one disk
    # os.open with 0o666 respects the umask, as a plain open() would (mkstemp would force 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_npz(path: str | Path) -> dict | None:
    """The arrays of an .npz file by name, or None where it is absent or unreadable (damaged by hand,
    a foreign file): callers treat such a file as missing and recompute or do without it."""
    import numpy as np

    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None
