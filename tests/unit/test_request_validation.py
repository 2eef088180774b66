"""Request tensor checks: every refusal names the tensor, what came and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from covidct.errors import TensorInputError
from covidct.serving.request_validation import (
    check_tensor,
    validate_hu_volume,
    validate_probabilities,
    validate_slice_counts,
    validate_spacing,
)


def test_valid_volume_and_spacing_pass_through() -> None:
    hu = np.zeros((4, 32, 40), dtype=np.int16)
    out = validate_hu_volume(hu)
    assert out.dtype == np.int16 and out.shape == (4, 32, 40)
    spacing = validate_spacing(np.array([2.0, 0.7, 0.7], dtype=np.float32))
    np.testing.assert_allclose(spacing, [2.0, 0.7, 0.7], rtol=1e-6)
    # A non-contiguous view comes back contiguous with the same values.
    view = np.zeros((4, 64, 64), dtype=np.int16)[:, ::2, ::2]
    assert validate_hu_volume(view).flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(
    "array,pattern",
    [
        (np.zeros((4, 32, 32), np.float32),
         r"HU_VOLUME: got dtype float32 \[4, 32, 32\]; expected int16 \[-1, -1, -1\]"),
        (np.zeros((32, 32), np.int16), r"HU_VOLUME: got shape int16 \[32, 32\]; expected int16 \[-1, -1, -1\]"),
        (np.zeros((0, 32, 32), np.int16), r"HU_VOLUME: got int16 \[0, 32, 32\] with 0 slices; expected at least 1"),
        (np.zeros((2, 16, 32), np.int16),
         r"HU_VOLUME: got int16 \[2, 16, 32\], slices 16x32 pixels; expected H, W >= 32"),
        ([[1, 2]], r"HU_VOLUME: got list; expected an array int16 \[-1, -1, -1\]"),
    ],
)
def test_bad_volumes_are_refused(array: object, pattern: str) -> None:
    with pytest.raises(TensorInputError, match=pattern):
        validate_hu_volume(array)


def test_too_many_slices_and_custom_name() -> None:
    too_many = r"SELECTED_HU: got int16 \[5, 32, 32\] with 5 slices; expected at most 4"
    with pytest.raises(TensorInputError, match=too_many):
        validate_hu_volume(np.zeros((5, 32, 32), np.int16), "SELECTED_HU", max_slices=4)


@pytest.mark.parametrize(
    "array,pattern",
    [
        (np.array([2.0, 0.7], np.float32), r"SPACING_MM: got shape float32 \[2\]; expected float32 \[3\]"),
        (np.array([2.0, 0.7, 0.7]), r"SPACING_MM: got dtype float64 \[3\]; expected float32 \[3\]"),
        (np.array([2.0, 0.0, 0.7], np.float32), r"SPACING_MM: got \[2, 0, 0.7\]; expected three finite"),
        (np.array([np.inf, 1, 1], np.float32), r"SPACING_MM: got \[inf, 1, 1\]; expected three finite"),
    ],
)
def test_bad_spacing_is_refused(array: np.ndarray, pattern: str) -> None:
    with pytest.raises(TensorInputError, match=pattern):
        validate_spacing(array)


def test_slice_counts_must_agree() -> None:
    a, b = np.zeros((3, 1), np.float32), np.zeros(3, np.int32)
    assert validate_slice_counts({"PROBABILITY": a, "SELECTED_INDICES": b}) == 3
    with pytest.raises(TensorInputError, match=r"slice counts differ: PROBABILITY has 3, LUNG_MASK has 2; expected 3"):
        validate_slice_counts({"PROBABILITY": a, "LUNG_MASK": np.zeros((2, 4, 4), np.uint8)})
    with pytest.raises(TensorInputError, match=r"PROBABILITY has 3; expected 4"):
        validate_slice_counts({"PROBABILITY": a}, expected=4)
    # no lung found: zero slices everywhere is a consistent (empty) request
    assert validate_slice_counts({"PROBABILITY": np.zeros((0, 1), np.float32), "LUNG_MASK": np.zeros((0, 4, 4))}) == 0


def test_generic_tensor_check_and_probabilities() -> None:
    ok = check_tensor(np.zeros((2, 1, 8, 8), np.float32), "INFECTION_PROBABILITY", np.float32, (None, 1, -1, None))
    assert ok.shape == (2, 1, 8, 8)
    with pytest.raises(TensorInputError, match=r"PROBABILITY: got shape float32 \[2, 2\]; expected float32 \[-1, 1\]"):
        check_tensor(np.zeros((2, 2), np.float32), "PROBABILITY", np.float32, (None, 1))
    with pytest.raises(TensorInputError, match=r"PROBABILITY: got values 0.1..1.2"):
        validate_probabilities(np.array([0.1, 1.2], np.float32), "PROBABILITY")


def test_spacing_and_matrix_limits_of_what_scanners_produce() -> None:
    from covidct.preprocessing.reader_config import ReaderConfig

    reader = ReaderConfig()
    assert validate_spacing(np.array([2.0, 0.7, 0.7], np.float32), "SPACING_MM", reader).tolist() == pytest.approx(
        [2.0, 0.7, 0.7]
    )
    huge_z = r"SPACING_MM: got \[1e\+09, 0\.7, 0\.7\]; expected z in \[0\.1, 60\] mm"
    with pytest.raises(TensorInputError, match=huge_z):
        validate_spacing(np.array([1e9, 0.7, 0.7], np.float32), "SPACING_MM", reader)
    with pytest.raises(TensorInputError, match=r"y, x in \[0\.1, 12\] mm \(spacings CT scanners produce\)"):
        validate_spacing(np.array([2.0, 100.0, 100.0], np.float32), "SPACING_MM", reader)
    with pytest.raises(TensorInputError, match=r"slices 4100x32 pixels; expected H, W <= 4096"):
        validate_hu_volume(np.zeros((1, 4100, 32), np.int16), "HU_VOLUME")
