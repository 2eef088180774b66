"""HU windowing: map Hounsfield units linearly to float32 [0, 1].

``window_normalize`` is the intensity step of every network input (see
:mod:`preprocessing.model_inputs`): ``(hu - min_hu) / (max_hu - min_hu)``, clipped to
[0, 1]. The default window (:class:`~preprocessing.config.WindowConfig`) is
-1000..400 HU, which keeps air, aerated lung, ground-glass opacity, consolidation and
soft tissue apart and saturates bone.

Works on any shape (typically ``[N, H, W]`` slices); the output has the same shape.
"""

from __future__ import annotations

import math

import numpy as np

from covidct.errors import ConfigError, VolumeError
from preprocessing.config import WindowConfig


def check_window(config: WindowConfig) -> tuple[float, float]:
    """Return ``(min_hu, max_hu)`` after checking they are finite and increasing."""
    lo, hi = float(config.min_hu), float(config.max_hu)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ConfigError(
            f"WindowConfig: min_hu={config.min_hu!r}, max_hu={config.max_hu!r}; "
            "expected finite values with min_hu < max_hu"
        )
    return lo, hi


def window_normalize(hu: np.ndarray, config: WindowConfig = WindowConfig()) -> np.ndarray:
    """Window HU values to float32 in [0, 1].

    Args:
        hu: HU values of any real dtype (int16 from the readers), any shape,
            typically ``[N, H, W]``.
        config: the HU window; values below ``min_hu`` map to 0, above ``max_hu`` to 1.

    Returns:
        float32 array of the same shape, values in [0, 1].
    """
    lo, hi = check_window(config)
    array = np.asarray(hu)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise VolumeError(f"window_normalize: hu has dtype {array.dtype}; expected integer or float HU")
    out = array.astype(np.float32, copy=True)
    # In place: one float32 buffer, no temporaries of the full stack.
    np.subtract(out, np.float32(lo), out=out)
    np.multiply(out, np.float32(1.0 / (hi - lo)), out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return out
