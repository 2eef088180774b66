"""PNG plots of the benchmark results (matplotlib, Agg backend, no display needed).

Every function takes plain lists/dicts (the JSON rows the benchmarks write) and a path,
writes one PNG and returns the path. Latencies are plotted in seconds or milliseconds as
the axis label says; throughput in patients (inferences) per second.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    _pyplot().close(fig)
    return path


def plot_paper_comparison(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Latency (s) vs slice count: ours (median, p95 bar), the naive baseline, the paper (P100)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    slices = [r["slices"] for r in rows]
    ours = [r["ours_median_s"] for r in rows]
    p95 = [r["ours_p95_s"] for r in rows]
    ax.plot(slices, [r["paper_s"] for r in rows], "s--", color="tab:gray", label="paper 002 (Keras, Tesla P100)")
    ax.errorbar(slices, ours, yerr=[[0.0] * len(ours), [max(b - a, 0.0) for a, b in zip(ours, p95)]],
                fmt="o-", color="tab:blue", capsize=3, label="ours via Triton (median, bar to p95)")
    naive = [r.get("naive_median_s") for r in rows]
    if all(v is not None for v in naive):
        ax.plot(slices, naive, "^-", color="tab:orange", label="naive baseline, same machine (median)")
    ax.set_xlabel("slices per patient")
    ax.set_ylabel("latency per patient (s)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_concurrency(points: Sequence[dict[str, Any]], path: Path, title: str,
                     x_key: str = "concurrency", series_key: str | None = None) -> Path:
    """Throughput (left) and latency (right, p50/p95 in ms) against ``x_key``.

    ``points``: dicts with ``x_key``, ``throughput_per_s``, ``p50_ms``, ``p95_ms`` and,
    when ``series_key`` is given, that key to split the points into lines (e.g. ``instances``).
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    groups: dict[Any, list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault(p.get(series_key) if series_key else None, []).append(p)
    for key, group in groups.items():
        group = sorted(group, key=lambda p: p[x_key])
        x = [p[x_key] for p in group]
        label = f"{series_key}={key}" if series_key else None
        left.plot(x, [p["throughput_per_s"] for p in group], "o-", label=label)
        right.plot(x, [p["p50_ms"] for p in group], "o-", label=f"p50 {label or ''}".strip())
        right.plot(x, [p["p95_ms"] for p in group], "x--", label=f"p95 {label or ''}".strip())
    left.set_xlabel(x_key)
    left.set_ylabel("throughput (patients/s)")
    right.set_xlabel(x_key)
    right.set_ylabel("latency (ms)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_latency_fit(slices: Sequence[int], latencies_s: Sequence[float], fixed_s: float,
                     per_slice_s: float, path: Path, title: str) -> Path:
    """Measured latency (s) vs slice count with the fitted line ``fixed + per_slice * slices``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(slices, latencies_s, "o", label="measured median")
    lo, hi = min(slices), max(slices)
    ax.plot([lo, hi], [fixed_s + per_slice_s * lo, fixed_s + per_slice_s * hi], "-",
            label=f"fit: {fixed_s * 1e3:.0f} ms + {per_slice_s * 1e3:.2f} ms/slice")
    ax.set_xlabel("slices per patient")
    ax.set_ylabel("latency (s)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
