"""The resolution a request runs at: the long edge the model sees, chosen per request.

Any long edge may be asked for; it is snapped to a multiple of the patch size and bounded by
the server's cap, so a request's cost (pixels, model time, the ZeroGPU duration asked for) stays
within what the server allows. Default: the authors' 1024 px on a GPU, the training resolution
(512 px) on a CPU, where 1024 px costs about six times as much.
"""

from __future__ import annotations

import math

from tagger.errors import SelectionError

SIZE_STEP = 16  # the patch size: the preprocessor floors sides to multiples of it anyway
MIN_SIZE = 64  # the authors' page's lower bound: 4 x 4 patches
GPU_DEFAULT_SIZE = 1024
CPU_DEFAULT_SIZE = 512
GPU_DEFAULT_CAP = 2048
CPU_DEFAULT_CAP = 1024


def size_cap(device_type: str) -> int:
    """The default cap: what one request may ask for on this kind of device (a GPU answers
    2048 px in a fraction of a second)."""
    return CPU_DEFAULT_CAP if device_type == "cpu" else GPU_DEFAULT_CAP


def default_size(device_type: str) -> int:
    """The default long edge on this kind of device (``torch.device.type``)."""
    return CPU_DEFAULT_SIZE if device_type == "cpu" else GPU_DEFAULT_SIZE


def snap_size(value: object, cap: int, default: int) -> int:
    """``value`` (pixels; None: ``default``) rounded to a multiple of 16 and kept within 64 and
    ``cap``. Raises ``SelectionError`` with a sentence when it is not a number."""
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SelectionError(f"max_size must be a number of pixels (the long edge the model sees), not {value!r:.40}.")
    top = max(MIN_SIZE, cap // SIZE_STEP * SIZE_STEP)
    snapped = round(value / SIZE_STEP) * SIZE_STEP
    return min(top, max(MIN_SIZE, snapped))
