"""The precision of a run: chosen from the device's capabilities (simulated here), or by the launcher."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sslhub.training import precision
from sslhub.training.precision import launcher_precision, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def cpu(monkeypatch):
    """Simulate a CPU: `cpu(flags, machine, probe)` sets its bf16 flags, architecture and probe rates."""

    def simulate(flags=(), machine="x86_64", probe=(0.28, 142.0), kernels="AVX512", onednn_cap=None):
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: list(flags))
        monkeypatch.setattr(precision.platform, "machine", lambda: machine)
        monkeypatch.setattr(precision, "cpu_bf16_probe", lambda: probe)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)  # ATen's kernels
        if onednn_cap:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_cap)

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    for name in precision.ONEDNN_ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    return simulate


@pytest.mark.parametrize(("flags", "expected"), [(("avx512_bf16",), "bf16"), (("amx",), "bf16"), ((), "no")])
def test_auto_uses_bf16_only_on_cpus_that_compute_it_natively(cpu, flags, expected):
    cpu(flags)
    choice = resolve_precision("auto", CPU)
    assert choice.mode == expected
    assert ("native bf16" in choice.reason) and (("no native" in choice.reason) == (expected == "no"))


@pytest.mark.parametrize(("probe", "expected"), [((40.0, 20.0), "bf16"), ((0.5, 20.0), "no")])
def test_auto_on_other_cpus_follows_a_matmul_probe(cpu, probe, expected):
    cpu(flags=(), machine="aarch64", probe=probe)
    choice = resolve_precision("auto", CPU)
    assert choice.mode == expected and "probe" in choice.reason


@pytest.mark.parametrize(
    "caps",
    [
        {"onednn_cap": "AVX2"},  # oneDNN (matmuls, convolutions) capped below the CPU's bf16 instructions
        {"onednn_cap": "AVX512_CORE"},
        {"kernels": "AVX2"},  # ATen's kernels capped (ATEN_CPU_CAPABILITY=avx2) or built without AVX-512
        {"kernels": "DEFAULT"},
    ],
)
@pytest.mark.parametrize(("probe", "expected"), [((2.0, 255.0), "no"), ((380.0, 255.0), "bf16")])
def test_auto_on_a_bf16_cpu_with_capped_kernels_follows_the_probe(cpu, caps, probe, expected):
    cpu(flags=("avx512_bf16", "amx"), probe=probe, **caps)
    choice = resolve_precision("auto", CPU)
    assert choice.mode == expected
    assert "capped" in choice.reason and "probe" in choice.reason
    assert (caps.get("onednn_cap") or caps.get("kernels")) in choice.reason


@pytest.mark.parametrize("caps", [{}, {"onednn_cap": "ALL"}, {"kernels": "AVX512"}])
def test_auto_on_a_bf16_cpu_with_uncapped_kernels_needs_no_probe(cpu, monkeypatch, caps):
    cpu(flags=("amx",), probe=(2.0, 255.0), **caps)

    def no_probe():
        raise AssertionError("probed")

    monkeypatch.setattr(precision, "cpu_bf16_probe", no_probe)
    assert resolve_precision("auto", CPU).mode == "bf16"


def test_the_probe_is_cached_per_kernel_cap(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "PROBE_CACHE", tmp_path / "probe.json")
    monkeypatch.setattr(precision, "cpu_kernel_caps", lambda: ["ONEDNN_MAX_CPU_ISA=AVX2"])
    monkeypatch.setattr(precision, "matmul_rates", lambda dtype: 2.0 if dtype == torch.bfloat16 else 255.0)
    precision.cpu_bf16_probe.cache_clear()
    try:
        assert precision.cpu_bf16_probe() == (2.0, 255.0)
        monkeypatch.setattr(precision, "cpu_kernel_caps", lambda: [])
        monkeypatch.setattr(
            precision, "matmul_rates", lambda dtype: 380.0 if dtype == torch.bfloat16 else 255.0
        )
        precision.cpu_bf16_probe.cache_clear()
        assert precision.cpu_bf16_probe() == (380.0, 255.0)  # not the capped kernels' rates
        keys = list(json.loads((tmp_path / "probe.json").read_text()))
        assert len(keys) == 2 and any("ONEDNN_MAX_CPU_ISA=AVX2" in key for key in keys)
    finally:
        precision.cpu_bf16_probe.cache_clear()


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "no")])
def test_auto_on_cuda_follows_the_gpus_bf16_support(monkeypatch, cpu, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    choice = resolve_precision("auto", CUDA)
    assert choice.mode == expected and "Test GPU" in choice.reason


def test_unset_is_auto_and_explicit_choices_are_kept(cpu):
    cpu(flags=())
    assert resolve_precision(None, CPU).mode == "no"
    assert resolve_precision("no", CPU).mode == "no"
    assert resolve_precision("fp16", CPU).mode == "fp16"
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        resolve_precision("half", CPU)


def test_explicit_bf16_without_native_support_warns_with_the_measured_slowdown(cpu):
    cpu(flags=(), probe=(0.28, 142.0))
    with pytest.warns(UserWarning, match=r"0.28 GFLOP/s in bf16 against 142.0 in fp32 here \(507x slower\)"):
        assert resolve_precision("bf16", CPU).mode == "bf16"


def test_the_launchers_explicit_choice_decides_when_the_recipe_leaves_it_unset(cpu, monkeypatch, tmp_path):
    cpu(flags=("avx512_bf16",))
    monkeypatch.setattr(precision, "_launcher_argv", lambda: ["accelerate", "launch", "train.py"])
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_precision(None, CPU).mode == "fp16"
    assert resolve_precision("no", CPU).mode == "no"  # the recipe's own setting wins
    # accelerate exports "no" when nothing was asked for: that is not a choice, auto decides
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no default accelerate config file
    assert launcher_precision() is None and resolve_precision(None, CPU).mode == "bf16"
    # ... unless the launcher's command line or config file said so
    monkeypatch.setattr(
        precision, "_launcher_argv", lambda: ["accelerate", "launch", "--mixed_precision", "no"]
    )
    assert resolve_precision(None, CPU).mode == "no"
    config = tmp_path / "launch.yaml"
    config.write_text("distributed_type: 'NO'\nmixed_precision: 'no'\n")
    monkeypatch.setattr(
        precision, "_launcher_argv", lambda: ["accelerate", "launch", "--config_file", str(config)]
    )
    assert resolve_precision(None, CPU).mode == "no"
    config.write_text("distributed_type: 'NO'\n")
    assert resolve_precision(None, CPU).mode == "bf16"


@pytest.mark.parametrize(
    "path",
    sorted(
        [*(ROOT / "recipes" / "configs").glob("*.yaml"), *(ROOT / "recipes" / "accelerate").glob("*.yaml")]
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_shipped_configs_leave_the_precision_to_the_device(path):
    assert yaml.safe_load(path.read_text()).get("mixed_precision", "auto") == "auto"


@pytest.mark.parametrize("launcher_choice", ["no", "bf16"])
def test_accelerate_launch_precision_reaches_the_recipe(tmp_path, launcher_choice):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    command += ["--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", launcher_choice]
    command += [str(ROOT / "recipes" / "pretrain_moco.py"), "--dataset", "sample", "--split", "test[:64]"]
    command += ["--model.backbone", "test_resnet", "--model.image_size", "32", "--model.queue_size", "32"]
    command += ["--batch_size", "16", "--max_steps", "1", "--num_workers", "0", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mixed_precision"] == launcher_choice
    assert "set by accelerate launch" in metrics["precision_reason"]
    shown = {"no": "fp32", "bf16": "bf16"}[launcher_choice]  # the closing report names fp32 as users know it
    assert f"images/s ({shown}; set by accelerate launch" in result.stdout
