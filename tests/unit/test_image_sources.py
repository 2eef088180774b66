"""8-bit windowed CT image sources (covidct.training.image_sources) and data sets (covidct.training.sets).

Every image here is written by the test itself: a synthetic chest slice in HU (outside air
-1000, body fat -100 / muscle +40, two lungs about -850 with vessels, an optional bone
marker anterior-right and an optional ground-glass lesion in the right lung), windowed
to 8 bit with a known width/level, saved as PNG (exact) or JPEG quality 95 where the
layout uses JPEG. The loaded HU are compared with the HU the test started from.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct.errors import ConfigError, DatasetError, GrayMapError
from covidct.preprocessing.config import ModelInputConfig, PipelineConfig
from covidct.training.image_sources import (
    TRANSFORMS,
    infection_mask_cases,
    mosmed_slices_cases,
    orient,
    sars_cov_2_ct_cases,
)
from covidct.training.sets import SetSpec, data_report, parse_set, prepare_set

MARKER_HU = 700.0
LESION_HU = -450.0
#: stored image -> patient frame is TRANSFORMS[t]; the test stores INVERSE[t](patient frame)
INVERSE = {
    "none": lambda a: a,
    "rot90": lambda a: np.rot90(a, -1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 1),
    "transpose": lambda a: a.T,
    "flip-lr": lambda a: a[:, ::-1],
    "flip-ud": lambda a: a[::-1, :],
}


def window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> uint8 with window width/level (HU), as a viewer screenshot would."""
    return np.clip(np.round((hu - (level - width / 2)) / width * 255), 0, 255).astype(np.uint8)


def chest_slice(height: int = 96, width: int | None = None, *, seed: int = 0, marker: bool = True,
                lesion: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient-frame HU slice [H, W] (rows anterior -> posterior, columns right -> left).

    Returns (hu float64, lungs bool, lesion mask bool). The bone marker sits anterior-right
    (top-left); the lesion (-450 HU) in the right lung (left half of the image).
    """
    width = width or height
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    yy, xx = yy / height, xx / width
    hu = np.full((height, width), -1000.0)
    hu[((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1] = -100.0
    hu[((xx - 0.5) / 0.37) ** 2 + ((yy - 0.5) / 0.27) ** 2 <= 1] = 40.0
    lungs = np.zeros((height, width), bool)
    for cx in (0.33, 0.67):
        lung = ((xx - cx) / 0.12) ** 2 + ((yy - 0.5) / 0.2) ** 2 <= 1
        lungs |= lung
        hu[lung] = -850.0 + rng.normal(0, 25, size=(height, width))[lung]
        hu[lung & (rng.random((height, width)) < 0.03)] = 30.0
    if marker:
        hu[(yy >= 0.24) & (yy < 0.30) & (xx >= 0.26) & (xx < 0.32)] = MARKER_HU
    spot = np.zeros((height, width), bool)
    if lesion:
        spot = (((xx - 0.3) / 0.06) ** 2 + ((yy - 0.55) / 0.08) ** 2 <= 1) & lungs
        hu[spot] = LESION_HU + rng.normal(0, 20, size=(height, width))[spot]
    return hu + rng.normal(0, 12, size=hu.shape), lungs, spot


def save_gray(path: Path, gray: np.ndarray, *, rgb: bool = False) -> Path:
    """uint8 [H, W] -> PNG (lossless) or JPEG quality 95 by suffix; ``rgb``: 3 equal channels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.stack([gray] * 3, axis=-1) if rgb else np.ascontiguousarray(gray))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95)
    else:
        image.save(path)
    return path


def write_labels(root: Path, rows: list[dict[str, str]], fields: tuple[str, ...] = ("file", "label")) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def hu_error(loaded: np.ndarray, hu: np.ndarray, gray: np.ndarray, lungs: np.ndarray) -> float:
    """Median |loaded - truth| (HU) over unsaturated lung and soft tissue pixels."""
    soft = (np.abs(hu - 40) < 60) | (np.abs(hu + 100) < 40)
    valid = (lungs | soft) & (gray > 0) & (gray < 255)
    assert valid.sum() > 0.2 * valid.size
    return float(np.median(np.abs(loaded.astype(np.float64)[valid] - hu[valid])))


def marker_centre(hu: np.ndarray) -> tuple[float, float]:
    """(row, column) of the bone marker's centre, as fractions of the image side."""
    rows, cols = np.nonzero(hu >= 120)  # soft tissue stays below; the marker saturates at >= 150 HU
    assert rows.size > 0, "marker not found"
    return rows.mean() / hu.shape[0], cols.mean() / hu.shape[1]


def write_mosmed(root: Path, windows=((1500, -600), (2000, -500), (1200, -550), (1600, -650)), size: int = 96,
                 suffix: str = ".jpg", seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """``mosmed-slices`` layout: labels.csv (file,label,mosmed_class) + covid/, non-covid/ images of
    3 equal channels; alternating labels. Returns {file: (hu, lungs, gray, label)}."""
    rows, truth = [], {}
    for i, (w, level) in enumerate(windows):
        label = 1 - i % 2
        hu, lungs, _ = chest_slice(size, seed=seed + i, lesion=bool(label))
        gray = window(hu, w, level)
        name = f"{'covid' if label else 'non-covid'}/study_{seed + i:04d}{suffix}"
        save_gray(root / name, gray, rgb=True)
        rows.append({"file": name, "label": "covid" if label else "non-covid",
                     "mosmed_class": f"CT-{1 + i % 3}" if label else "CT-0"})
        truth[name] = (hu, lungs, gray, label)
    write_labels(root, rows, ("file", "label", "mosmed_class"))
    return truth


def write_infection_set(root: Path, names: list[str], *, size: int | tuple[int, int] = 64, transform: str = "none",
                        windows=((1500, -600), (1600, -500))) -> dict[str, tuple[np.ndarray, ...]]:
    """``infection-masks`` layout: images/<name>.jpg + masks/<name>.png (0/255), stored as
    INVERSE[transform] of the patient frame; every other slice has a lesion.
    Returns {name: (hu, lungs, infection mask, gray)}, all in the patient frame."""
    h, w = (size, size) if isinstance(size, int) else size
    out = {}
    for i, name in enumerate(names):
        hu, lungs, spot = chest_slice(h, w, seed=10 + i, lesion=i % 2 == 0)
        gray = window(hu, *windows[i % len(windows)])
        save_gray(root / "images" / f"{name}.jpg", np.ascontiguousarray(INVERSE[transform](gray)))
        save_gray(root / "masks" / f"{name}.png", np.ascontiguousarray(INVERSE[transform](spot.astype(np.uint8) * 255)))
        out[name] = (hu, lungs, spot, gray)
    return out


def small_pipeline(size: int = 32) -> PipelineConfig:
    inp = ModelInputConfig(size=size)
    return PipelineConfig(classifier_input=inp, segmenter_input=inp)


# ---------------------------------------------------------------------------- the three layouts


def test_mosmed_slices_labels_groups_and_hu(tmp_path):
    truth = write_mosmed(tmp_path / "mosmed")
    cases = mosmed_slices_cases(tmp_path / "mosmed")
    assert [c.patient_id for c in cases] == list(truth)
    assert [c.label for c in cases] == [t[3] for t in truth.values()] == [1, 0, 1, 0]
    assert [c.diagnosis for c in cases] == ["COVID-19", "not COVID-19"] * 2
    # no identifiers: every file is its own split group
    assert [c.group_id for c in cases] == [f"mosmed-slices/{name}" for name in truth]
    for case in cases:
        hu, lungs, gray, label = truth[case.patient_id]
        data = case.load()
        assert data.hu.shape == (1, 96, 96) and data.hu.dtype == np.int16
        assert data.label == label and data.slice_labels.tolist() == [label]
        assert data.group == case.group_id and data.infection_mask is None
        assert hu_error(data.hu[0], hu, gray, lungs) < 30, case.patient_id


def test_sars_cov_2_ct_crops_keep_their_shape(tmp_path):
    root = tmp_path / "sao-paulo"
    rows, truth = [], {}
    crops = [(slice(20, 110), slice(10, 126), (1500, -600)), (slice(16, 104), slice(14, 118), (1300, -500)),
             (slice(24, 100), slice(6, 130), (2000, -550))]
    for i, (rs, cs, (w, level)) in enumerate(crops):
        hu, lungs, _ = chest_slice(128, 136, seed=20 + i, lesion=i != 1)
        hu, lungs = hu[rs, cs], lungs[rs, cs]
        gray = window(hu, w, level)
        name = f"{'COVID' if i != 1 else 'non-COVID'}/crop ({i}).png"
        save_gray(root / name, gray)
        rows.append({"file": name, "label": "COVID" if i != 1 else "non-COVID"})  # labels: any case
        truth[name] = (hu, lungs, gray)
    write_labels(root, rows)
    cases = sars_cov_2_ct_cases(root)
    assert [c.label for c in cases] == [1, 0, 1]
    assert [c.group_id for c in cases] == [f"sars-cov-2-ct/{name}" for name in truth]
    for case in cases:
        hu, lungs, gray = truth[case.patient_id]
        data = case.load()
        assert data.hu.shape == (1, *gray.shape)  # crops are not padded
        assert hu_error(data.hu[0], hu, gray, lungs) < 30, case.patient_id


def test_infection_masks_labels_groups_hu_and_mask(tmp_path):
    root = tmp_path / "inf"
    names = ["coronacases_001_12", "coronacases_001_13", "radiopaedia_7_3", "single"]
    truth = write_infection_set(root, names)
    # masks come as 0/255, as 0/1/2 class maps, or soft 0..255 (>= 128 counts)
    spot = truth["radiopaedia_7_3"][2]
    Image.fromarray((spot * 2).astype(np.uint8)).save(root / "masks" / "radiopaedia_7_3.png")
    cases = infection_mask_cases(root)
    assert [c.patient_id for c in cases] == [f"{n}.jpg" for n in sorted(names)]
    groups = {c.patient_id: c.group_id for c in cases}
    assert groups == {"coronacases_001_12.jpg": "infection-masks/coronacases_001",
                      "coronacases_001_13.jpg": "infection-masks/coronacases_001",
                      "radiopaedia_7_3.jpg": "infection-masks/radiopaedia_7",
                      "single.jpg": "infection-masks/single"}
    for case in cases:
        hu, lungs, spot, gray = truth[case.patient_id.removesuffix(".jpg")]
        data = case.load()
        assert data.hu.shape == (1, 64, 64) and data.infection_mask.shape == (1, 64, 64)
        assert data.label == int(spot.any()) and data.slice_labels.tolist() == [int(spot.any())]
        np.testing.assert_array_equal(data.infection_mask[0], spot)
        assert data.group == groups[case.patient_id]
        assert hu_error(data.hu[0], hu, gray, lungs) < 30, case.patient_id
    assert sorted(int(c.load().label) for c in cases) == [0, 0, 1, 1]


def test_soft_mask_counts_values_from_128(tmp_path):
    root = tmp_path / "inf"
    write_infection_set(root, ["vol_1"])
    soft = np.zeros((64, 64), np.uint8)
    soft[10:20, 10:20] = 127
    soft[30:34, 20:30] = 200
    Image.fromarray(soft).save(root / "masks" / "vol_1.png")
    mask = infection_mask_cases(root)[0].load().infection_mask[0]
    assert mask.sum() == 40 and mask[30:34, 20:30].all()


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_transform_brings_stored_image_to_patient_frame(tmp_path, transform):
    hu, _, _ = chest_slice(96, 80, seed=3)
    gray = window(hu, 1500, -600)
    save_gray(tmp_path / "upright" / "a.png", gray)
    write_labels(tmp_path / "upright", [{"file": "a.png", "label": "covid"}])
    save_gray(tmp_path / "stored" / "a.png", np.ascontiguousarray(INVERSE[transform](gray)))
    write_labels(tmp_path / "stored", [{"file": "a.png", "label": "covid"}])
    upright = mosmed_slices_cases(tmp_path / "upright")[0].load().hu[0]
    turned = mosmed_slices_cases(tmp_path / "stored", transform)[0].load().hu[0]
    np.testing.assert_array_equal(turned, upright)  # the map is estimated the same way in any orientation
    row, col = marker_centre(turned)
    assert row < 0.4 and col < 0.4  # anterior-right = top-left of the patient frame


def test_a_quarter_turn_left_uncorrected_puts_the_marker_elsewhere(tmp_path):
    hu, _, _ = chest_slice(96, seed=3)
    save_gray(tmp_path / "a.png", np.ascontiguousarray(np.rot90(window(hu, 1500, -600), -1)))
    write_labels(tmp_path, [{"file": "a.png", "label": "non-covid"}])
    row, col = marker_centre(mosmed_slices_cases(tmp_path)[0].load().hu[0])
    assert row < 0.4 and col > 0.6  # stored a quarter turn clockwise: anterior-right is top-right
    row, col = marker_centre(mosmed_slices_cases(tmp_path, "rot90")[0].load().hu[0])
    assert row < 0.4 and col < 0.4


def test_infection_masks_rotated_non_square_mask_follows_and_is_padded_with_air(tmp_path):
    root = tmp_path / "inf"
    truth = write_infection_set(root, ["vol_1", "vol_2"], size=(48, 64), transform="rot90")
    assert np.asarray(Image.open(root / "images" / "vol_1.jpg")).shape == (64, 48)  # stored a quarter turn off
    for case in infection_mask_cases(root, "rot90"):
        hu, lungs, spot, gray = truth[case.patient_id.removesuffix(".jpg")]
        data = case.load()
        assert data.hu.shape == (1, 64, 64) and data.infection_mask.shape == (1, 64, 64)
        image, mask = data.hu[0], data.infection_mask[0]
        # 48 rows centred in 64: 8 rows of air above and below, no infection there
        assert (image[:8] == -1000).all() and (image[56:] == -1000).all()
        assert not mask[:8].any() and not mask[56:].any()
        np.testing.assert_array_equal(mask[8:56], spot)
        assert data.label == int(spot.any())
        row, col = marker_centre(image[8:56])
        assert row < 0.4 and col < 0.4
        assert hu_error(image[8:56], hu, gray, lungs) < 30


def test_orient_rejects_unknown_transform():
    with pytest.raises(DatasetError, match=r"image transform 'rot45'; expected one of \['flip-lr'"):
        orient(np.zeros((2, 2)), "rot45")


# ---------------------------------------------------------------------------- sets: refusals and reports


def test_prepare_set_skips_image_without_map_and_names_it(tmp_path):
    root = tmp_path / "data"
    write_mosmed(root / "setA", windows=((1500, -600), (1200, -550)), size=64)
    save_gray(root / "setA" / "covid" / "flat.png", np.full((64, 64), 120, np.uint8))
    with open(root / "setA" / "labels.csv", "a", encoding="utf-8") as f:
        f.write("covid/flat.png,covid,CT-1\n")
    spec = parse_set("mosmed-slices:setA", root)
    prepared = prepare_set(spec, small_pipeline(), "classification", slices="all")
    assert prepared.listed == 3 and len(prepared.patients) == 2
    assert [s["case"] for s in prepared.skipped] == ["covid/flat.png"]
    assert "flat.png: 1 histogram peak" in prepared.skipped[0]["reason"]
    assert prepared.patients[0].inputs.shape == (1, 1, 32, 32)
    report = data_report([prepared], [])["sets"][0]
    assert (report["listed"], report["used"], report["role"]) == (3, 2, "train")
    assert report["skipped"] == list(prepared.skipped)
    assert report["origin"] == "user-supplied" and report["folder"] == "setA"
    assert report["slices_per_class"] == {"COVID-19": 1, "not COVID-19": 1, "unlabelled": 0}
    # the card describes a public set by its folder name
    assert "CC BY-NC-ND" in parse_set("mosmed-slices:mosmed-slices", root).describe()["licence"]


def test_prepare_set_of_refused_images_only_is_an_error(tmp_path):
    root = tmp_path / "flat"
    save_gray(root / "covid" / "flat.png", np.full((64, 64), 120, np.uint8))
    save_gray(root / "non-covid" / "black-white.png", np.repeat(np.array([[0, 255]], np.uint8), 32, axis=1)
              .repeat(64, axis=0))
    write_labels(root, [{"file": "covid/flat.png", "label": "covid"},
                        {"file": "non-covid/black-white.png", "label": "0"}])
    cases = mosmed_slices_cases(root)
    with pytest.raises(GrayMapError, match=r"flat\.png: 1 histogram peak"):
        cases[0].load()
    with pytest.raises(GrayMapError, match=r"black-white\.png: only 0\.0% of the pixels lie in gray 6\.\.254"):
        cases[1].load()
    with pytest.raises(DatasetError, match=r"flat: no usable case \(2 skipped: .*flat\.png: 1 histogram peak"):
        prepare_set(SetSpec("mosmed-slices", root, "none", "flat"), small_pipeline(), "classification", slices="all")


def test_unreadable_image_is_a_dataset_error_naming_it(tmp_path):
    root = tmp_path / "s"
    write_mosmed(root, windows=((1500, -600),), size=64)
    (root / "covid" / "bad.jpg").write_bytes(b"\x00not a jpeg at all" * 20)
    with open(root / "labels.csv", "a", encoding="utf-8") as f:
        f.write("covid/bad.jpg,covid,CT-2\n")
    with pytest.raises(DatasetError, match=r"covid/bad\.jpg: not a readable image"):
        prepare_set(SetSpec("mosmed-slices", root, "none", "s"), small_pipeline(), "classification", slices="all")


def test_colour_image_is_refused(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    write_labels(tmp_path, [{"file": "red.png", "label": "covid"}])
    with pytest.raises(DatasetError, match=r"red\.png: colour image \(mode RGB\)"):
        mosmed_slices_cases(tmp_path)[0].load()


def test_mask_of_another_size_is_a_dataset_error(tmp_path):
    root = tmp_path / "inf"
    write_infection_set(root, ["vol_1"])
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(root / "masks" / "vol_1.png")
    with pytest.raises(DatasetError, match=r"masks/vol_1\.png: mask of 32x48 px; expected 64x64 like its image "
                                           r".*images/vol_1\.jpg"):
        infection_mask_cases(root)[0].load()


def test_infection_masks_layout_errors(tmp_path):
    root = tmp_path / "inf"
    (root / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"inf/images: empty or missing folder"):
        infection_mask_cases(root)
    with pytest.raises(DatasetError, match=r"nowhere/images: empty or missing folder"):
        infection_mask_cases(tmp_path / "nowhere")
    write_infection_set(root, ["vol_1", "vol_2"])
    (root / "masks" / "vol_2.png").rename(root / "masks" / "vol_3.png")
    with pytest.raises(DatasetError, match=r"masks/vol_3: mask without an image of that name"):
        infection_mask_cases(root)
    (root / "masks" / "vol_3.png").unlink()
    with pytest.raises(DatasetError, match=r"images/vol_2\.jpg: no mask .*masks/vol_2\.png"):
        infection_mask_cases(root)
    with pytest.raises(DatasetError, match=r"image transform 'sideways'"):
        infection_mask_cases(root, "sideways")


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("a.png,covid\nb.png,maybe\n", r"labels\.csv line 3: unknown label 'maybe'; expected one of"),
        ("a.png,covid\nmissing.png,covid\n", r"labels\.csv line 3: image 'missing\.png' not found under"),
        ("a.png,covid\na.png,non-covid\n", r"labels\.csv line 3: image 'a\.png' listed twice"),
        ("", r"labels\.csv: no label rows \(empty data set\)"),
    ],
)
def test_labels_csv_errors_name_the_line(tmp_path, rows, match):
    hu, _, _ = chest_slice(32)
    save_gray(tmp_path / "a.png", window(hu, 1500, -600))
    save_gray(tmp_path / "b.png", window(hu, 1500, -600))
    (tmp_path / "labels.csv").write_text("file,label\n" + rows, encoding="utf-8")
    with pytest.raises(DatasetError, match=match):
        mosmed_slices_cases(tmp_path)


def test_labels_csv_missing_file_or_columns(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere: data folder not found"):
        sars_cov_2_ct_cases(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"labels\.csv: labels file not found"):
        sars_cov_2_ct_cases(tmp_path)
    (tmp_path / "labels.csv").write_text("path,class\nx.png,covid\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"labels\.csv: missing columns \['file', 'label'\]"):
        sars_cov_2_ct_cases(tmp_path)


def test_parse_set(tmp_path):
    spec = parse_set("infection-masks:infection-masks/pseudo:rot90", tmp_path)
    assert spec == SetSpec("infection-masks", tmp_path / "infection-masks/pseudo", "rot90", "infection-masks/pseudo")
    described = spec.describe()
    assert described["transform"] == "rot90" and "Semi-Inf-Net" in described["name"]
    assert parse_set("sars-cov-2-ct:mine/", tmp_path).transform == "none"


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("mosmed-slices", r"data set entry 'mosmed-slices'; expected KIND:PATH\[:TRANSFORM\]"),
        ("mosmed-slices:a:rot90:extra", r"expected KIND:PATH\[:TRANSFORM\]"),
        ("mosmed-slices::rot90", r"data set entry 'mosmed-slices::rot90'; expected KIND:PATH"),
        ("jpeg:folder", r"data set entry 'jpeg:folder': kind 'jpeg'; expected one of \["),
        ("sets:folder", r"kind 'sets'; expected one of"),
        ("phantom:folder", r"kind 'phantom'; expected one of"),
        ("mosmed-slices:folder:rot45", r"data set entry 'mosmed-slices:folder:rot45': transform 'rot45'; expected"),
    ],
)
def test_parse_set_errors(tmp_path, entry, match):
    with pytest.raises(ConfigError, match=match):
        parse_set(entry, tmp_path)


def test_single_source_training_skips_images_without_map(tmp_path):
    from covidct.training.config import resolve_train_config
    from covidct.training.run import run_training

    root = tmp_path / "setA"
    write_mosmed(root, windows=((1500, -600), (1200, -550)) * 2, size=64)
    save_gray(root / "covid" / "flat.png", np.full((64, 64), 120, np.uint8))
    with open(root / "labels.csv", "a", encoding="utf-8") as f:
        f.write("covid/flat.png,covid,CT-1\n")
    cfg = resolve_train_config(None, {"model": "cnn6", "input_size": 32, "epochs": 1, "batch_size": 4,
                                      "validation_fraction": 0.0, "train_slices": "all", "num_threads": 1,
                                      "data": {"kind": "mosmed-slices", "path": str(root)}})
    result = run_training(cfg, tmp_path / "out", progress=False)
    assert (result.checkpoint / "weights.pt").is_file()
