"""Training sources of 8-bit windowed CT images, in the pipeline's own terms (HU, patient frame).

Three public layouts (each image is one "patient" of one slice, ``hu`` int16 ``[1, H, W]``):

- :func:`mosmed_slices_cases` (``mosmed-slices``): ``root/labels.csv`` with ``file,label[,mosmed_class]``
  (``label`` ``covid`` = 1, ``non-covid`` = 0; files relative to ``root``); full axial slices.
  No identifiers: every file is its own split group.
- :func:`sars_cov_2_ct_cases` (``sars-cov-2-ct``): the same ``file,label`` layout; thorax crops.
  Patients are not recorded: every file is its own group (validate across sources).
- :func:`infection_mask_cases` (``infection-masks``): ``root/images/<name>.<ext>`` with
  ``root/masks/<name>.png`` (0/255, 0/1/2 classes, or 0-255 soft: a class map counts any
  class > 0, a gray mask counts values >= 128). ``<volume>_<slice>`` names share the split
  group ``<volume>``. Slice label: any infection pixel. Non-square images are padded to a
  square with air (-1000 HU), as a served slice is square.

Each image goes through :func:`covidct.preprocessing.gray_to_hu.estimate_gray_to_hu` (its own
gray-to-HU map, never one window for a set) and :func:`orient` (``transform``: how the
stored image turns into the readers' patient frame, rows anterior -> posterior, columns
right -> left; :data:`TRANSFORMS`). An image whose map cannot be estimated raises
:class:`~covidct.errors.GrayMapError` when loaded; :func:`covidct.training.datasets.prepare_cases`
lists it as skipped with the reason. An unreadable image or a mask of another size raises
:class:`~covidct.errors.DatasetError` naming the file. Spacing is not recorded in these
images: ``spacing_mm`` is the nominal (1, 1, 1) (nothing downstream of the slice inputs uses it).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable

import numpy as np

from covidct.errors import DatasetError
from covidct.training.patients import PatientCase, PatientData

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
#: Stored image -> patient frame (numpy views of ``[H, W]``).
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda a: a,
    "rot90": lambda a: np.rot90(a, 1),  # a quarter turn counter-clockwise
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "transpose": lambda a: a.T,
    "flip-lr": lambda a: a[:, ::-1],
    "flip-ud": lambda a: a[::-1, :],
}
POSITIVE_LABELS = {"covid", "covid-19", "covid19", "positive", "1"}
NEGATIVE_LABELS = {"non-covid", "noncovid", "normal", "negative", "other", "0"}
NOMINAL_SPACING_MM = (1.0, 1.0, 1.0)
AIR_HU = -1000


def orient(image: np.ndarray, transform: str) -> np.ndarray:
    """``[H, W]`` as stored -> the patient frame (``transform`` from :data:`TRANSFORMS`)."""
    if transform not in TRANSFORMS:
        raise DatasetError(f"image transform {transform!r}; expected one of {sorted(TRANSFORMS)}")
    return np.ascontiguousarray(TRANSFORMS[transform](image))


def read_gray(path: Path) -> np.ndarray:
    """An 8-bit image file -> uint8 ``[H, W]``; colour images must be gray (equal channels)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            array = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from exc
    if array.ndim == 3:
        channels = array[..., :3].astype(np.int16)
        if np.abs(channels - channels[..., :1]).max() > 8:
            raise DatasetError(f"{path}: colour image (mode {mode}); expected a gray CT image (equal channels)")
        array = array[..., 0]
    if array.ndim != 2 or array.dtype != np.uint8:
        raise DatasetError(f"{path}: image of shape {array.shape}, dtype {array.dtype}; expected 8-bit gray [H, W]")
    return array


def image_to_hu(path: Path, transform: str) -> tuple[np.ndarray, dict]:
    """File -> (int16 HU ``[H, W]`` in the patient frame, the estimated map as a dict)."""
    from covidct.preprocessing.gray_to_hu import estimate_gray_to_hu

    gray = read_gray(path)
    mapping = estimate_gray_to_hu(gray, source=str(path))
    return orient(mapping.apply(gray), transform), mapping.to_dict()


def pad_square(hu: np.ndarray, fill: int = AIR_HU) -> np.ndarray:
    """Pad ``[H, W]`` to a centred square with ``fill``."""
    h, w = hu.shape
    side = max(h, w)
    out = np.full((side, side), fill, dtype=hu.dtype)
    y, x = (side - h) // 2, (side - w) // 2
    out[y:y + h, x:x + w] = hu
    return out


def _label(value: str, csv_path: Path, line: int) -> int:
    key = value.strip().lower()
    if key in POSITIVE_LABELS:
        return 1
    if key in NEGATIVE_LABELS:
        return 0
    raise DatasetError(f"{csv_path} line {line}: unknown label {value!r}; expected one of "
                       f"{sorted(POSITIVE_LABELS | NEGATIVE_LABELS)}")


def _labelled_image_loader(path: Path, pid: str, label: int, transform: str, source: str
                           ) -> Callable[[], PatientData]:
    def load() -> PatientData:
        hu, _ = image_to_hu(path, transform)
        return PatientData(pid, label, hu[None], NOMINAL_SPACING_MM, np.array([label], np.int8),
                           group_id=f"{source}/{pid}")

    return load


def labelled_image_cases(root: str | Path, source: str, transform: str = "none") -> list[PatientCase]:
    """``root/labels.csv`` (``file,label``) + the image files it names; one case per image."""
    root = Path(root)
    csv_path = root / "labels.csv"
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder not found")
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DatasetError(f"{csv_path}: labels file not found (expected file,label rows)") from exc
    reader = csv.DictReader(text.splitlines())
    missing = {"file", "label"} - set(reader.fieldnames or [])
    if missing:
        raise DatasetError(f"{csv_path}: missing columns {sorted(missing)}; found {reader.fieldnames}")
    orient(np.zeros((1, 1)), transform)  # unknown transforms fail before any image is read
    cases, seen = [], set()
    for line, row in enumerate(reader, start=2):
        name = (row["file"] or "").strip()
        path = root / name
        if not name or not path.is_file():
            raise DatasetError(f"{csv_path} line {line}: image {name!r} not found under {root}")
        if name in seen:
            raise DatasetError(f"{csv_path} line {line}: image {name!r} listed twice")
        seen.add(name)
        label = _label(row["label"] or "", csv_path, line)
        cases.append(PatientCase(name, label, _labelled_image_loader(path, name, label, transform, source),
                                 group_id=f"{source}/{name}", diagnosis="COVID-19" if label else "not COVID-19"))
    if not cases:
        raise DatasetError(f"{csv_path}: no label rows (empty data set)")
    return cases


def mosmed_slices_cases(root: str | Path, transform: str = "none") -> list[PatientCase]:
    """MosMed slices (``mosmed-slices`` layout): COVID-19 (CT-1, CT-2) against no findings (CT-0)."""
    return labelled_image_cases(root, "mosmed-slices", transform)


def sars_cov_2_ct_cases(root: str | Path, transform: str = "none") -> list[PatientCase]:
    """Sao Paulo SARS-CoV-2 CT crops (``sars-cov-2-ct``): COVID-19 against other lung disease or none."""
    return labelled_image_cases(root, "sars-cov-2-ct", transform)


def _read_mask(path: Path, shape: tuple[int, int], image: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mask = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable mask image ({exc})") from exc
    if mask.shape != shape:
        raise DatasetError(f"{path}: mask of {mask.shape[0]}x{mask.shape[1]} px; expected {shape[0]}x{shape[1]} "
                           f"like its image {image}")
    return mask > 0 if mask.max() <= 2 else mask >= 128


def _mask_loader(image: Path, mask: Path, pid: str, group: str, transform: str) -> Callable[[], PatientData]:
    def load() -> PatientData:
        from covidct.preprocessing.gray_to_hu import estimate_gray_to_hu

        gray = read_gray(image)
        target = _read_mask(mask, gray.shape, image)
        mapping = estimate_gray_to_hu(gray, source=str(image))
        hu = pad_square(orient(mapping.apply(gray), transform))
        infection = pad_square(orient(target, transform).astype(np.int16), 0) > 0
        label = int(infection.any())
        return PatientData(pid, label, hu[None], NOMINAL_SPACING_MM, np.array([label], np.int8),
                           infection_mask=infection[None], group_id=group)

    return load


VOLUME_SLICE = re.compile(r"^(?P<volume>.+)_(?P<slice>\d+)$")


def infection_mask_cases(root: str | Path, transform: str = "none") -> list[PatientCase]:
    """``root/images`` + ``root/masks`` paired by file stem (see the module docstring)."""
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if images_dir.is_dir() else []
    if not images:
        raise DatasetError(f"{images_dir}: empty or missing folder (expected images {', '.join(IMAGE_SUFFIXES)})")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES} \
        if masks_dir.is_dir() else {}
    orient(np.zeros((1, 1)), transform)
    stems = {p.stem for p in images}
    unknown = sorted(set(masks) - stems)
    if unknown:
        raise DatasetError(f"{masks_dir / unknown[0]}: mask without an image of that name in {images_dir}")
    cases = []
    for image in images:
        if image.stem not in masks:
            raise DatasetError(f"{image}: no mask {masks_dir / (image.stem + '.png')}")
        match = VOLUME_SLICE.match(image.stem)
        group = f"infection-masks/{match['volume'] if match else image.stem}"
        # the label is read from the mask: 1 provisionally, the loaded data carry the true one
        cases.append(PatientCase(image.name, -1, _mask_loader(image, masks[image.stem], image.name, group, transform),
                                 group_id=group))
    return cases
