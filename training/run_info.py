"""What a run took and where it ran: wall time, CPU/GPU, cores and versions (``run_info.json``)."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_info(seconds: float, device: str) -> dict[str, Any]:
    """Wall time (s) and the machine: CPU model, cores, torch threads, GPU name, versions."""
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {
        "wall_seconds": round(float(seconds), 1),
        "device": device,
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
