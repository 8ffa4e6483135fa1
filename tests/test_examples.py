"""The sample examples run as scripts (the Planetary Computer ones need the internet)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_examples__sample_pipeline_runs_and_recovers_misregistration(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "sample_pipeline.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("misregistration recovered"))
    rmse = float(line.split("RMSE")[1].split("px")[0])
    assert rmse <= 0.1


def test_examples__planetary_computer_example_is_valid_python():
    source = (EXAMPLES / "parvati_planetary_computer.py").read_text()
    compile(source, "parvati_planetary_computer.py", "exec")
    assert "Expected output" in source
