"""A fixed 20-step run of every recipe gives the recorded weights: refactorings change no number.

A deliberate change of behaviour re-records the reference (`python -m tests.reference_runs --record`).
"""

import json
import math

import pytest

from .reference_runs import REFERENCE, RUNS, fingerprint, machine, run

RECORDED = json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("name", RUNS)
def test_recipe_run_reproduces_the_recorded_weights(name, tmp_path):
    result = run(name, tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    got, expected = fingerprint(tmp_path), RECORDED["runs"][name]
    assert got["stats"].keys() == expected["stats"].keys()
    if machine() == RECORDED["machine"]:
        assert got["sha256"] == expected["sha256"], "the weights differ from the recorded run"
    else:  # other kernels round differently: the statistics agree closely, not bit for bit
        for key, (total, norm) in expected["stats"].items():
            scale = max(norm, 1e-3)
            assert math.isclose(got["stats"][key][0], total, abs_tol=2e-3 * scale * 10), key
            assert math.isclose(got["stats"][key][1], norm, rel_tol=2e-3, abs_tol=1e-6), key
