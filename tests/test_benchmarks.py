"""The prepared GPU check (benchmarks/gpu_check.py) must not rot between the sessions that have
a GPU: its --smoke mode runs the same code on a tiny float32 model here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.integration
def test_the_gpu_check_runs_and_prints_its_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| llama tiny")]
    assert [row.split("|")[2].strip() for row in rows] == ["sft", "vaccine", "booster", "repnoise"]
    assert "SafetyWorld sft seed 0 (defend -> attack -> evaluate): HS before" in done.stdout
