"""The example scripts run end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_script(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--steps", "6", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "torch threads: 1 (OMP_NUM_THREADS)" in result.stdout
    assert "merged logits identical: True" in result.stdout
    assert (tmp_path / "rpg" / "rpg_model.safetensors").exists()
