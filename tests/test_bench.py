"""The benchmark scripts of bench/: the GPU check's CPU dry run, the time-to-accuracy arithmetic and its
quick mode, the step breakdown's quick mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _run(*command: str) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_gpu_check_dry_runs_every_part_on_a_cpu(tmp_path):
    out = tmp_path / "results_gpu.json"
    _run(
        "bash",
        str(ROOT / "bench" / "gpu_check.sh"),
        "--device",
        "cpu",
        "--dry-run",
        "--out",
        str(out),
    )
    results = json.loads(out.read_text())
    assert results["errors"] == {}, results["errors"]
    assert results["mode"] == "dry-run" and results["machine"]["cpu_flags"]["torch_cpu_capability"]
    assert {"bf16", "fp32"} <= set(results["matmul"]["flops_per_second"])
    assert results["resnet50_224"]["sslhub, shuffle_bn_splits=8 (preset)"]["images_per_second"] > 0
    assert results["host_syncs"]["checked"] is False  # CUDA's sync debug mode only exists on a GPU
    assert {"views in turn", "views ahead (--prefetch)"} < set(results["views_ahead"])
    run = results["moco_run"]
    assert run["steps"] == 3 and 0 <= run["knn_top1"] <= 1 and "forward_backward" in run["step_time_ms"]


def test_gpu_kit_packs_what_the_gpu_machine_lacks_at_the_versions_tested_here():
    import importlib.metadata

    from gpu_kit import DEVICE_PACKAGES, kit_distributions, requirement_closure

    kit = kit_distributions(["sslhub"])
    assert {"datasets", "dill", "multiprocess"} <= set(kit)  # the H200 image has no `datasets`
    assert not {"torch", "transformers", "timm", "accelerate", "numpy", "sslhub"} & set(kit)  # it has these
    assert kit["datasets"] == importlib.metadata.version("datasets")
    without_transformers = " ".join(name for name in DEVICE_PACKAGES.split() if name != "transformers")
    assert "transformers" in kit_distributions(["sslhub"], without_transformers)
    with pytest.raises(SystemExit, match="not installed here: a-distribution-nobody-installed"):
        requirement_closure(["sslhub", "a-distribution-nobody-installed"])


def test_time_to_accuracy_reads_the_curves_between_evaluations():
    from time_to_accuracy import accuracy_at, summarize, time_to_reach

    curve = [(0.0, 0.20), (10.0, 0.30), (20.0, 0.40)]
    assert time_to_reach(curve, 0.35) == pytest.approx(15.0)
    assert time_to_reach(curve, 0.20) == 0.0 and time_to_reach(curve, 0.41) is None
    assert accuracy_at(curve, 5.0) == pytest.approx(0.25) and accuracy_at(curve, 99.0) == 0.40

    def run(library, seed, points):
        return {
            "library": library,
            "seed": seed,
            "curve": [{"train_seconds": t, "knn_top1": a} for t, a in points],
            "train_seconds": points[-1][0],
            "images_per_second": 100.0,
            "peak_memory_mb": 1000.0,
        }

    runs = [
        run("sslhub", 0, [(0, 0.2), (10, 0.4), (20, 0.5)]),
        run("sslhub", 1, [(0, 0.2), (12, 0.4), (22, 0.5)]),
        run("lightly", 0, [(0, 0.2), (20, 0.3), (40, 0.45)]),
        run("lightly", 1, [(0, 0.2), (20, 0.3), (40, 0.45)]),
    ]
    summary = summarize(runs)
    ours, theirs = summary["sslhub"], summary["lightly"]
    assert ours["final_knn_top1"] == pytest.approx(0.5) and ours["train_seconds"] == pytest.approx(21.0)
    assert ours["seconds_to_other_final"] == pytest.approx(16.0)  # 0.45 halfway from 0.4 (11 s) to 0.5 (21 s)
    assert theirs["seconds_to_other_final"] is None  # lightly never reaches 0.5
    assert theirs["knn_top1_at_other_seconds"] == pytest.approx(0.3075)  # at 21 s: 0.3 + 0.15 / 20
    assert ours["other_seconds_after_own_end"] and not theirs["other_seconds_after_own_end"]


def test_time_to_accuracy_of_one_library_reports_its_seeds_without_a_comparison():
    import dataclasses

    import torch
    from common import machine_info
    from time_to_accuracy import Protocol, library_summary, render

    runs = [
        {
            "library": "sslhub",
            "seed": seed,
            "curve": [{"train_seconds": 0.0, "knn_top1": 0.2}, {"train_seconds": t, "knn_top1": a}],
            "train_seconds": t,
            "images_per_second": ips,
            "peak_memory_mb": mb,
            "process_seconds": t + 5,
        }
        for seed, (t, a, ips, mb) in enumerate([(100.0, 0.44, 1000.0, 900.0), (110.0, 0.46, 900.0, 950.0)])
    ]
    one = library_summary(runs, "sslhub")
    assert one["final_knn_top1"] == pytest.approx(0.45) and one["train_seconds"] == pytest.approx(105.0)
    assert one["final_knn_top1_std"] == pytest.approx(0.02**0.5 / 10)
    assert one["images_per_second"] == pytest.approx(950.0) and one["peak_memory_mb"] == 950.0
    results = {
        "mode": "full",
        "machine": machine_info(torch.device("cpu")),
        "protocol": dataclasses.asdict(Protocol()),
        "seeds": [0, 1],
        "runs": runs,
        "libraries": ["sslhub"],
        "summary": {"sslhub": one},
    }
    report = render(results)
    assert "Only sslhub ran" in report and "45.0% (44.0%, 46.0%) ± 1.41 (std)" in report
    assert "| lightly" not in report and "time to reach" not in report


def test_precision_step_times_both_precisions_interleaved():
    from precision_step import main

    results = main(["--batch-sizes", "16", "--rounds", "2", "--steps", "1", "--device", "cpu"])
    measured = results["batch_16"]
    median = measured["ms_per_step_median"]
    assert set(median) == {"fp32", "bf16"} and all(ms > 0 for ms in median.values())
    assert all(measured["ms_per_step_fastest_round"][p] <= median[p] for p in median)
    assert measured["fp32_over_bf16"] == pytest.approx(median["fp32"] / median["bf16"])
    assert results["machine"]["cpu_flags"]["torch_cpu_capability"]


def test_equal_epoch_accuracy_is_compared_with_an_exact_permutation_test():
    from time_to_accuracy import equal_epochs, permutation_p_value

    # 4 + 4 values split 70 ways; fully separated groups: 2 of the 70 splits are as extreme (both signs).
    assert permutation_p_value([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    assert permutation_p_value([1, 2, 3, 4], [4, 3, 2, 1]) == 1.0
    runs = [
        {"library": lib, "curve": [{"knn_top1": 0.1}, {"knn_top1": final}]}
        for lib, final in [("sslhub", 0.44), ("sslhub", 0.42), ("lightly", 0.45), ("lightly", 0.47)]
    ]
    compared = equal_epochs(runs)
    assert compared["difference"] == pytest.approx(-0.03)
    assert compared["std"]["lightly"] == pytest.approx(0.02**0.5 / 10)
    assert compared["permutation_p"] == pytest.approx(
        2 / 6
    )  # 2 + 2 values: the observed split and its mirror


def test_time_to_accuracy_keeps_runs_per_library_settings(monkeypatch):
    import time_to_accuracy
    from time_to_accuracy import Protocol, machine_key, run_key

    p, splits, workers = Protocol(), Protocol(shuffle_bn_splits=2), Protocol(lightly_workers=4)
    here = machine_key()
    # Two CPUs with one model name ("AMD EPYC") and different vector units are two machines.
    monkeypatch.setattr(time_to_accuracy, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(time_to_accuracy, "cpu_flags", lambda: {"flags": ["avx2", "fma"]})
    avx2_epyc = machine_key()
    monkeypatch.setattr(time_to_accuracy, "cpu_flags", lambda: {"flags": ["avx2", "fma", "avx512_bf16"]})
    other_cpu = machine_key()
    assert avx2_epyc != other_cpu

    def key(protocol, library, avx2=False, machine=here):
        return run_key(protocol, library, avx2, machine)

    # A setting one library reads reruns that library only; shared settings, kernel caps and another machine
    # rerun both.
    assert key(splits, "lightly") == key(p, "lightly")
    assert key(splits, "sslhub") != key(p, "sslhub")
    assert key(workers, "sslhub") == key(p, "sslhub")
    assert key(workers, "lightly") != key(p, "lightly")
    for library in ("sslhub", "lightly"):
        assert key(Protocol(epochs=20), library) != key(p, library)
        assert key(p, library, avx2=True) != key(p, library)
        assert key(p, library, machine=other_cpu) != key(p, library, machine=avx2_epyc)


@pytest.mark.slow
def test_time_to_accuracy_quick_mode_writes_its_results(tmp_path):
    pytest.importorskip("lightly")
    _run(
        sys.executable,
        str(ROOT / "bench" / "time_to_accuracy.py"),
        "--quick",
        "--seeds",
        "0",
        "1",
        "--out-dir",
        str(tmp_path),
    )
    results = json.loads((tmp_path / "time_to_accuracy.json").read_text())
    assert {(r["library"], r["seed"]) for r in results["runs"]} == {
        (lib, seed) for lib in ("sslhub", "lightly") for seed in (0, 1)
    }
    assert all(len(r["curve"]) == 4 for r in results["runs"])  # random init + 3 epochs
    assert results["machine"]["cpu_flags"]["flags"] is not None
    assert "Time to accuracy" in (tmp_path / "TIME_TO_ACCURACY.md").read_text()
    assert (tmp_path / "time_to_accuracy.png").stat().st_size > 10_000


@pytest.mark.slow
def test_step_breakdown_quick_mode_writes_its_results(tmp_path):
    _run(
        sys.executable,
        str(ROOT / "bench" / "step_breakdown.py"),
        "--quick",
        "--out-dir",
        str(tmp_path),
    )
    results = json.loads((tmp_path / "step_breakdown.json").read_text())
    assert len(results["step"]) == 5 and len(results["views_ahead"]) == 2 and len(results["recipe"]) == 4
    assert (
        any("NCHW" in name for name in results["step"])
        and "--channels_last false (NCHW)" in results["recipe"]
    )
