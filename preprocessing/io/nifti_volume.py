"""Read a NIfTI volume (``.nii``, ``.nii.gz``) into an axial HU :class:`CTVolume`.

HU = raw * scl_slope + scl_inter (nibabel applies the header scaling), rounded and
clipped to int16. The voxel axes are reoriented to DICOM's patient frame (LPS) and
returned as ``[N, H, W]``: slices from inferior to superior, rows from anterior to
posterior, columns from the patient's right to left - the layout of an axial DICOM
series with Image Orientation (Patient) ``[1,0,0,0,1,0]``. Spacing (z, y, x) in mm comes
from the affine (voxel sizes along the reoriented axes); ``positions_mm`` are the slice
centres projected onto the slice normal.

Before nibabel parses anything, the file size and the raw header are checked: shape,
data type and the memory budget (:mod:`covidct.preprocessing.io.limits`), the voxel size
``pixdim[1:4]`` (finite, positive) and ``vox_offset`` (header extensions within
``max_file_bytes``). The affine's voxel sizes must be finite and positive, and the
reoriented spacing within the config's ranges, before the voxel data is read.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from covidct.errors import (
    GeometryMismatchError,
    ImplausibleSpacingError,
    PixelDecodeError,
    ResourceLimitError,
    UnsupportedFormatError,
    VolumeError,
)
from covidct.preprocessing.reader_config import ReaderConfig
from covidct.preprocessing.io.limits import check_matrix, check_volume_bytes, mib
from covidct.preprocessing.io.reader_checks import (
    check_pixel_spacing,
    check_slice_count,
    check_slice_spacing,
    clip_to_int16,
)
from covidct.preprocessing.volume import CTVolume, make_series_key

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Array axes (i, j, k) point to patient Left, Posterior, Superior after reorientation.
LPS = ("L", "P", "S")
#: Header sizes (bytes) of NIfTI-1 and NIfTI-2 and their nibabel header classes.
_HEADER_CLASSES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
#: A NIfTI file may hold this many times ReaderConfig.max_volume_bytes (float64 voxels).
FILE_BUDGET_FACTOR = 4


def check_nifti_header(path: Path, config: ReaderConfig = ReaderConfig()) -> tuple[int, ...]:
    """The declared shape, after checking size, shape, data type, memory budget,
    ``pixdim`` and ``vox_offset`` from the raw header: nothing else is parsed or read."""
    limit = FILE_BUDGET_FACTOR * config.max_volume_bytes
    size = path.stat().st_size
    if size > limit:
        raise ResourceLimitError(
            f"{path}: NIfTI file of {size} bytes ({mib(size)}); expected at most {limit} bytes "
            f"({FILE_BUDGET_FACTOR} x ReaderConfig.max_volume_bytes)"
        )
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as fp:
            block = fp.read(max(_HEADER_CLASSES))
        sizes = {int.from_bytes(block[:4], order) for order in ("little", "big")}
        header_class = next(_HEADER_CLASSES[n] for n in sorted(sizes) if n in _HEADER_CLASSES)
        header = header_class(block[: header_class.template_dtype.itemsize], check=False)
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = header.get_data_dtype()
    except Exception as exc:  # gzip, nibabel: many types for bad headers
        raise UnsupportedFormatError(
            f"{path}: not a readable NIfTI image ({type(exc).__name__}: {exc})"
        ) from exc
    if len(shape) < 3 or any(s != 1 for s in shape[3:]) or min(shape[:3]) < 1:
        raise VolumeError(f"{path}: NIfTI shape {shape}; expected a 3-D volume (x, y, z)")
    check_volume_bytes(f"{path}: NIfTI shape {shape}", shape[:3], config)
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        raise VolumeError(f"{path}: NIfTI data type {dtype}; expected integer or float HU")
    offset = float(header["vox_offset"])
    if not 0 <= offset <= config.max_file_bytes:
        raise ResourceLimitError(
            f"{path}: NIfTI vox_offset is {offset:g} bytes; expected at most {config.max_file_bytes} "
            "(header extensions within ReaderConfig.max_file_bytes)"
        )
    pixdim = [float(v) for v in header["pixdim"][1:4]]
    if not all(math.isfinite(v) and v > 0 for v in pixdim):
        raise ImplausibleSpacingError(
            f"{path}: NIfTI voxel size pixdim[1:4] is {pixdim} mm; expected three finite positive mm values"
        )
    return shape


def read_nifti(path: str | Path, *, config: ReaderConfig = ReaderConfig()) -> CTVolume:
    """One NIfTI-1/2 volume as HU int16 ``[N, H, W]`` (axial, inferior to superior)."""
    path = Path(path)
    check_nifti_header(path, config)
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types for bad headers
        raise UnsupportedFormatError(
            f"{path}: not a readable NIfTI image ({type(exc).__name__}: {exc})"
        ) from exc
    shape = tuple(int(s) for s in image.shape)
    affine = np.asarray(image.affine, dtype=np.float64)
    voxel_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not (np.isfinite(affine).all() and (voxel_mm > 0).all()):
        raise ImplausibleSpacingError(
            f"{path}: NIfTI voxel size from the affine (sform/qform) is {voxel_mm.tolist()} mm; expected three "
            "finite positive mm values"
        )
    orientation = io_orientation(affine)
    if np.isnan(orientation).any():
        raise GeometryMismatchError(
            f"{path}: the NIfTI affine {affine[:3, :3].tolist()} maps no two voxel axes to distinct patient "
            "axes; expected an axis-aligned or oblique volume"
        )
    transform = ornt_transform(orientation, axcodes2ornt(LPS))
    axis_of = {int(out): i for i, out in enumerate(transform[:, 0])}  # LPS axis -> voxel axis
    num_slices = shape[axis_of[2]]
    check_slice_count(str(path), num_slices, config)
    check_matrix(str(path), shape[axis_of[1]], shape[axis_of[0]], config, "NIfTI in-plane size (rows x columns)")
    check_slice_spacing(str(path), "NIfTI slice spacing (affine)", float(voxel_mm[axis_of[2]]), config)
    check_pixel_spacing(
        str(path), "NIfTI in-plane voxel size (affine)", [float(voxel_mm[axis_of[1]]), float(voxel_mm[axis_of[0]])],
        config,
    )
    try:
        raw = np.asanyarray(image.dataobj)  # applies scl_slope / scl_inter
    except Exception as exc:  # truncated/corrupt data block
        raise PixelDecodeError(
            f"{path}: cannot read the NIfTI voxel data ({type(exc).__name__}: {exc})"
        ) from exc
    data = apply_orientation(raw.reshape(shape[:3]), transform)  # (L, P, S) axes
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise VolumeError(f"{path}: NIfTI voxels hold NaN or infinite values; expected HU")
        data = np.rint(data)
    hu = np.ascontiguousarray(clip_to_int16(data).transpose(2, 1, 0))
    new_affine = affine @ inv_ornt_aff(transform, shape[:3])
    zooms = np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0))  # along i (x), j (y), k (z)
    normal = new_affine[:3, 2] / zooms[2]
    first = float(new_affine[:3, 3] @ normal)
    return CTVolume(
        hu=hu,
        spacing_mm=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        positions_mm=first + np.arange(hu.shape[0], dtype=np.float64) * float(zooms[2]),
        series_key=make_series_key("nifti", path.name),
        source_format="nifti",
    )
