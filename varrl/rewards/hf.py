"""Shared plumbing for rewards backed by `transformers` models: lazy import, model location, images.

`transformers` is an optional dependency (`pip install 'varrl[eval]'`); it is imported only when a
model is actually loaded, so `import varrl` stays fast and works without it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# "org/name" or "name": what the Hugging Face hub accepts as a model id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelUnavailable(FileNotFoundError):
    """A reward or metric model could not be loaded; the message says how to provide it.

    A FileNotFoundError, so the CLI reports it as one line (see varrl/errors.py USER_ERRORS)."""


def import_transformers(what: str, error: type[ModelUnavailable] = ModelUnavailable):
    """The `transformers` module, or a clear error saying how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise error(f"{what} needs the `transformers` package: pip install 'varrl[eval]' "
                    f"(or pip install transformers)") from err
    return transformers


def model_location(path_or_id: str, what: str, how: str, error: type[ModelUnavailable]) -> str:
    """`path_or_id` as a string transformers can load: an existing local directory, or a hub id.

    A path that does not exist and cannot be a hub id (absolute, relative with ./, ~, or more than
    one '/') fails here at once instead of after a network attempt."""
    if not path_or_id:
        raise error(f"no {what} model given; {how}")
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise error(f"{what} model {path_or_id!r} is a file, not a model directory; {how}")
    if path.is_absolute() or path_or_id.startswith((".", "~")) or not _HUB_ID.match(path_or_id):
        raise error(f"{what} model directory {path_or_id!r} does not exist; {how}")
    return path_or_id


def to_pil(images) -> list:
    """uint8 [H, W, 3] arrays (a list, or a [B, H, W, 3] array) as RGB PIL images."""
    from PIL import Image

    out = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"image {i} must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
        out.append(Image.fromarray(arr, "RGB"))
    return out


def features(out):
    """The projected embedding from a `get_*_features` call: a tensor in transformers 4.x, a
    BaseModelOutputWithPooling (embedding in `pooler_output`) in 5.x."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output
