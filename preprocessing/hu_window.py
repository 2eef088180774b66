"""HU windowing: map Hounsfield units linearly to float32 [0, 1].

``window_normalize`` is the intensity step of every network input (see
:mod:`covidct.preprocessing.model_inputs`): ``(hu - min_hu) / (max_hu - min_hu)``, clipped to
[0, 1]. The default window (:class:`~covidct.preprocessing.config.WindowConfig`) is
-1000..400 HU, which keeps air, aerated lung, ground-glass opacity, consolidation and
soft tissue apart and saturates bone.

Works on any shape (typically ``[N, H, W]`` slices); the output has the same shape.
numpy in, numpy out; a torch tensor is windowed on its device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from covidct.errors import ConfigError, VolumeError
from covidct.preprocessing.config import WindowConfig
from covidct.preprocessing.devices import ArrayLike, as_tensor, dtype_name, like


def check_window(config: WindowConfig) -> tuple[float, float]:
    """Return ``(min_hu, max_hu)`` after checking they are finite and increasing."""
    lo, hi = float(config.min_hu), float(config.max_hu)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ConfigError(
            f"WindowConfig: min_hu={config.min_hu!r}, max_hu={config.max_hu!r}; "
            "expected finite values with min_hu < max_hu"
        )
    return lo, hi


def window_normalize(hu: ArrayLike, config: WindowConfig = WindowConfig()) -> ArrayLike:
    """Window HU values to float32 in [0, 1].

    Args:
        hu: HU values of any real dtype (int16 from the readers), any shape,
            typically ``[N, H, W]``: a numpy array, or a torch tensor on any device.
        config: the HU window; values below ``min_hu`` map to 0, above ``max_hu`` to 1.

    Returns:
        float32 of the same shape, values in [0, 1]: numpy for numpy input, else a tensor
        on the input's device.
    """
    lo, hi = check_window(config)
    values = as_tensor(hu, what="window_normalize: hu")
    if values.dtype == torch.bool or values.is_complex():
        raise VolumeError(f"window_normalize: hu has dtype {dtype_name(values)}; expected integer or float HU")
    out = values.to(torch.float32, copy=True)
    # In place: one float32 buffer, no temporaries of the full stack.
    out.sub_(float(np.float32(lo)))
    out.mul_(float(np.float32(1.0 / (hi - lo))))
    out.clamp_(0.0, 1.0)
    return like(out, hu)
