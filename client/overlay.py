"""PNG overlays of the server's masks (matplotlib's Agg canvas, no pyplot: thread-safe).

The ensemble answers with ``LUNG_MASK`` (0 background, 1 right lung, 2 left lung) and
``INFECTION_MASK`` (1 = infected) as uint8 ``[L, m, m]``, one plane per lung-bearing
slice (``LUNG_SLICES``) on a reduced m x m grid covering the whole ``H x W`` slice. Each
plane is upsampled to the slice size (nearest neighbour,
:func:`covidct.preprocessing.resize.resize_nearest`) and drawn over the HU slice: the right lung
outlined in cyan, the left in green, the infection filled red. Slices without lung have
no mask and get none. The title gives the slice probability, the answer (with the
reason codes of a not-assessable series) and, for a demo model, its warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covidct.errors import ClientError
from covidct.preprocessing.resize import resize_nearest
from covidct.preprocessing.volume import CTVolume

from covidct.client.result import NOT_ASSESSABLE, POSITIVE, PipelineResult

WINDOW_HU = (-1000.0, 400.0)
RIGHT_LUNG, LEFT_LUNG = 1, 2
MASK_LEGEND = "red: infection (server segmenter); cyan/green outline: right/left lung (server)"


def slice_masks(result: PipelineResult, index: int, shape_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lung labels uint8, infection bool)`` of slice ``index`` at ``shape_hw`` (H, W), or
    ``None`` when the slice has no lung (not in ``LUNG_SLICES``)."""
    hits = np.flatnonzero(result.lung_slices == index)
    if hits.size == 0:
        return None
    k = int(hits[0])
    planes = np.stack([result.lung_mask[k], result.infection_mask[k]])
    lung, infection = resize_nearest(planes, shape_hw)
    return lung, infection.astype(bool)


def answer_line(result: PipelineResult) -> str:
    """The answer as the title shows it."""
    if result.verdict == NOT_ASSESSABLE:
        return f"patient NOT ASSESSABLE ({', '.join(result.reason_codes)})"
    verdict = "POSITIVE" if result.verdict == POSITIVE else "negative"
    return f"patient {verdict}, fraction {result.positive_fraction:.2f}"


def overlay_slices(result: PipelineResult, max_slices: int = 0) -> list[tuple[int, float]]:
    """``(slice index, probability or NaN)`` of the slices to draw, ascending.

    The selected slices (``max_slices`` > 0 keeps those of highest probability); a result
    without selected slices (e.g. not assessable) draws its lung-bearing slices instead,
    ``max_slices`` of them evenly spread.
    """
    if len(result.selected_indices):
        order = np.arange(len(result.selected_indices))
        if max_slices > 0:
            order = np.sort(np.argsort(-result.slice_probabilities, kind="stable")[:max_slices])
        return [(int(result.selected_indices[j]), float(result.slice_probabilities[j])) for j in order]
    lung = np.sort(result.lung_slices)
    if max_slices > 0 and lung.size > max_slices:
        lung = lung[np.unique(np.linspace(0, lung.size - 1, max_slices).round().astype(int))]
    return [(int(i), float("nan")) for i in lung]


def write_overlays(
    volume: CTVolume,
    result: PipelineResult,
    out_dir: str | Path,
    *,
    name: str = "patient",
    max_slices: int = 0,
) -> list[Path]:
    """Write ``<out_dir>/<name>_z<index>.png`` per drawn slice (:func:`overlay_slices`);
    return the paths.

    HU shown in the window -1000..400; pixel aspect from ``volume.spacing_mm`` (y, x).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClientError(f"overlay folder {out}: cannot be created ({exc.strerror})") from exc
    _, sy, sx = volume.spacing_mm
    positions = dict(zip(result.selected_indices.tolist(), result.slice_positions_mm.tolist()))
    title_tail = answer_line(result) + (f"\n{result.demo_warning}" if result.demo else "")
    paths = []
    for index, probability in overlay_slices(result, max_slices):
        image = volume.hu[index]
        position = positions.get(index, float(volume.positions_mm[index]) if len(volume.positions_mm) else np.nan)
        fig = Figure(figsize=(5, 5.6), dpi=100)  # no pyplot: safe in worker threads
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.imshow(image, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=sy / sx)
        masks = slice_masks(result, index, image.shape)
        if masks is not None:
            lung, infection = masks
            red = np.zeros((*infection.shape, 4), dtype=np.float32)
            red[infection] = (1.0, 0.1, 0.1, 0.45)
            ax.imshow(red, aspect=sy / sx)
            for label, colour in ((RIGHT_LUNG, "cyan"), (LEFT_LUNG, "lime")):
                if (lung == label).any():
                    ax.contour(lung == label, levels=[0.5], colors=colour, linewidths=0.6)
        p_text = f"p={probability:.3f}" if probability == probability else "not classified"
        ax.set_title(f"slice {index} (z {position:.1f} mm)  {p_text}\n{title_tail}", fontsize=8)
        legend = MASK_LEGEND if masks is not None else "no lung on this slice: no mask"
        ax.text(0.01, 0.01, legend, transform=ax.transAxes, color="yellow", fontsize=6, va="bottom")
        ax.set_axis_off()
        path = out / f"{name}_z{index:04d}.png"
        fig.savefig(path, bbox_inches="tight")
        paths.append(path)
    return paths
