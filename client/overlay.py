"""PNG overlays of the selected slices (matplotlib's Agg canvas, no pyplot: thread-safe).

The ensemble returns no masks (only numbers; moving masks back would cost transfer and a
contract change owned by the serving models). The overlay's red area is therefore
computed here, on the workstation, with paper 000's classical thresholds
(:func:`preprocessing.lung_masks.lung_and_infection_masks`, default
:class:`~preprocessing.config.MaskConfig`): it is an infection *candidate* mask, labelled
so on every image, not the segmenter's output. The lung outline is drawn in cyan and the
served slice probability and verdict in the title.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covidct.errors import ClientError
from preprocessing.config import MaskConfig
from preprocessing.lung_masks import lung_and_infection_masks
from preprocessing.volume import CTVolume

from client.result import PipelineResult

MASK_LABEL = "candidate mask (paper 000 thresholds)"
WINDOW_HU = (-1000.0, 400.0)


def write_overlays(
    volume: CTVolume,
    result: PipelineResult,
    out_dir: str | Path,
    *,
    name: str = "patient",
    max_slices: int = 0,
    mask_config: MaskConfig = MaskConfig(),
) -> list[Path]:
    """Write ``<out_dir>/<name>_z<index>.png`` per selected slice; return the paths.

    ``max_slices`` > 0 keeps the slices of highest probability only. HU shown in the
    window -1000..400; pixel aspect from ``volume.spacing_mm`` (y, x).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClientError(f"overlay folder {out}: cannot be created ({exc.strerror})") from exc
    order = np.arange(len(result.selected_indices))
    if max_slices > 0:
        order = np.sort(np.argsort(-result.slice_probabilities, kind="stable")[:max_slices])
    indices = result.selected_indices[order]
    if indices.size == 0:
        return []
    lung, infection = lung_and_infection_masks(volume.hu[indices], mask_config)
    _, sy, sx = volume.spacing_mm
    verdict = "POSITIVE" if result.positive else "negative"
    paths = []
    for k, j in enumerate(order):
        index = int(result.selected_indices[j])
        position = result.slice_positions_mm[j] if len(result.slice_positions_mm) else float("nan")
        fig = Figure(figsize=(5, 5.4), dpi=100)  # no pyplot: safe in worker threads
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.imshow(volume.hu[index], cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=sy / sx)
        red = np.zeros((*infection[k].shape, 4), dtype=np.float32)
        red[infection[k]] = (1.0, 0.1, 0.1, 0.45)
        ax.imshow(red, aspect=sy / sx)
        if lung[k].any():
            ax.contour(lung[k], levels=[0.5], colors="cyan", linewidths=0.6)
        ax.set_title(
            f"slice {index} (z {position:.1f} mm)  p={result.slice_probabilities[j]:.3f}\n"
            f"patient {verdict}, fraction {result.positive_fraction:.2f}",
            fontsize=9,
        )
        ax.text(0.01, 0.01, f"red: {MASK_LABEL}", transform=ax.transAxes, color="yellow", fontsize=7, va="bottom")
        ax.set_axis_off()
        path = out / f"{name}_z{index:04d}.png"
        fig.savefig(path, bbox_inches="tight")
        paths.append(path)
    return paths
