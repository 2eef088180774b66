"""Arrays onto a torch device and back: the edges of the per-slice numerics.

The per-slice numerics (HU window, resizing, paper-000 masks, lung crop, model inputs,
block means of the 3-D mask grid, vote and burden reductions) are written once against
torch and run on the device of the tensors they are given: CPU tensors on Triton's
``KIND_CPU`` instances, CUDA tensors on ``KIND_GPU`` instances (inputs arrive by DLPack
and stay on the GPU between steps). Callers holding numpy arrays get numpy arrays back:
:func:`as_tensor` wraps a numpy array without copying it (CPU) and :func:`like` turns a
result back into the kind of array the caller passed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from covidct.errors import ConfigError, VolumeError

ArrayLike = np.ndarray | torch.Tensor


def as_tensor(array: Any, device: torch.device | str | None = None, what: str = "as_tensor") -> torch.Tensor:
    """``array`` (numpy array, torch tensor, or anything ``numpy.asarray`` takes) as a tensor on ``device``.

    A C-contiguous numpy array is wrapped without a copy and never written to (read-only
    arrays, such as Triton's input views, are wrapped as they are). ``device=None`` keeps
    a tensor where it is (numpy arrays stay on the CPU).

    Raises:
        VolumeError: ``array`` holds no numbers (strings, objects); ``what`` names it.
    """
    if isinstance(array, torch.Tensor):
        return array if device is None else array.to(device)
    values = np.ascontiguousarray(array)
    if values.dtype.kind not in "biuf":
        raise VolumeError(f"{what}: dtype {values.dtype}; expected integer, float or bool values")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(values)
    return tensor if device is None else tensor.to(device)


def torch_dtype(dtype: np.dtype | type) -> torch.dtype:
    """The torch dtype of a numpy dtype (``np.int16`` -> ``torch.int16``)."""
    return torch.from_numpy(np.zeros(0, dtype)).dtype


def dtype_name(tensor: torch.Tensor) -> str:
    """numpy's name of a tensor's dtype (``int16``, ``bool``, ``float32``) for messages."""
    return str(tensor.dtype).removeprefix("torch.")


def like(result: torch.Tensor, reference: Any) -> ArrayLike:
    """``result`` as a numpy array when ``reference`` is not a tensor, else unchanged."""
    if isinstance(reference, torch.Tensor):
        return result
    return result.detach().cpu().numpy()


def to_numpy(array: ArrayLike) -> np.ndarray:
    """A host numpy array of a tensor (copied from the GPU when it lives there) or an array."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def instance_device(kind: str, device_id: int = 0) -> torch.device:
    """The torch device of a Triton model instance (``model_instance_kind`` ``CPU``/``GPU``).

    Raises:
        ConfigError: a ``GPU`` instance where torch sees no CUDA device, or an unknown kind.
    """
    name = str(kind).upper().replace("KIND_", "")
    if name in ("CPU", "MODEL", "AUTO"):
        return torch.device("cpu")
    if name == "GPU":
        if not torch.cuda.is_available():
            raise ConfigError(f"instance kind {kind!r}: torch {torch.__version__} sees no CUDA device")
        return torch.device("cuda", int(device_id))
    raise ConfigError(f"instance kind {kind!r}; expected CPU or GPU")


def set_intra_op_threads(threads: int) -> None:
    """torch's intra-op threads of this process (0 leaves torch's default: all cores)."""
    if int(threads) < 0:
        raise ConfigError(f"intra_op_threads={threads!r}; expected >= 0 (0 = all cores)")
    if int(threads) > 0:
        torch.set_num_threads(int(threads))
