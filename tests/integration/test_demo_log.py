"""``covidct demo`` written to a file: a log a person can read (no redrawn progress bars).

Runs the real demo end to end (demo models trained in quick mode, exported, served by a real
Triton server, small phantoms sent through gRPC) with stdout and stderr going to a file, as
``make demo > demo.log 2>&1`` does, and reads the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MAX_LOG_LINES = 300


def test_demo_log_has_one_line_per_stage_and_no_redraws(tmp_path: Path) -> None:
    from covidct.app.triton_install import locate_triton
    from covidct.errors import ServerError

    try:
        locate_triton()
    except ServerError as exc:
        pytest.skip(f"no pip-installed Triton server: {exc}")
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if k not in ("COVIDCT_DATA_DIR",)}
    env["COVIDCT_CACHE_DIR"] = str(tmp_path / "cache")
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(
            [sys.executable, "-m", "covidct", "demo", "--demo-models", "--quick", "--slices", "8", "12",
             "--size", "128", "--no-real", "--output", str(tmp_path / "demo_output")],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200,
        )
    text = log.read_text(encoding="utf-8", errors="replace")
    assert done.returncode == 0, f"covidct demo failed (exit {done.returncode}):\n{text[-4000:]}"
    lines = text.splitlines()
    assert "\r" not in text, "a progress bar redrew itself in the log"
    assert len(lines) <= MAX_LOG_LINES, f"{len(lines)} lines in the demo log:\n" + "\n".join(lines[:80])
    # One line per stage (the synthetic patients, the demo's timed steps) and one JSON row per
    # training epoch, where the bars were.
    assert any(line.startswith("synthetic patients: 2 patient in ") for line in lines), text[-3000:]
    assert any(line.startswith("[demo] export portable repository: ") for line in lines), text[-3000:]
    epochs = [line for line in lines if line.startswith('{"epoch": ')]
    assert epochs and len(epochs) == len(set(epochs)), text[-3000:]
