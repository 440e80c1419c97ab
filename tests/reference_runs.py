"""Fixed 20-step runs of every training recipe, fingerprinted, to show that a refactoring changes no number.

    python -m tests.reference_runs --record     # after a deliberate change of behaviour: re-record

The fingerprint of a run is the SHA-256 of every tensor of its last checkpoint (weights, key encoder,
queues, class weights) plus per-tensor float64 sums and norms. On the machine kind that recorded it (same
torch version and CPU capability) the hash must match bit for bit; elsewhere kernels round differently, so
the per-tensor statistics must agree to a small tolerance instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from sslhub.training.precision import cpu_bf16_flags, cpu_model

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference_runs.json"
STEPS = 20
COMMON = ("--dataset", "sample", "--split", "test[:320]", "--seed", "11", "--num_workers", "0")
COMMON += (
    "--mixed_precision",
    "no",
    "--max_steps",
    str(STEPS),
    "--save_steps",
    str(STEPS),
    "--log_steps",
    "5",
)
RUNS = {
    "pretrain_moco_v2": (
        "pretrain_moco.py",
        ("--version", "v2", "--backbone", "test_resnet", "--image_size", "32", "--queue_size", "64"),
        ("--batch_size", "16", "--learning_rate", "0.1"),
    ),
    "pretrain_moco_v2_batched": (
        "pretrain_moco.py",
        ("--version", "v2", "--backbone", "test_resnet", "--image_size", "32", "--queue_size", "64"),
        ("--batch_size", "16", "--learning_rate", "0.1", "--batched_augmentation", "true"),
    ),
    "distill_seed": (
        "distill.py",
        ("--teacher", "timm:test_resnet", "--teacher_pretrained", "false", "--student", "test_resnet"),
        ("--image_size", "32", "--loss", "seed", "--queue_size", "64", "--batch_size", "16"),
    ),
    "pretrain_colorization": (
        "pretrain_colorization.py",
        ("--backbone", "test_resnet", "--image_size", "32", "--decoder_hidden_size", "16"),
        ("--batch_size", "16", "--prior_images", "64", "--sample_steps", "0", "--learning_rate", "1e-3"),
    ),
}


def machine() -> dict:
    """What decides the bits of a run: torch's version, the CPU kernels it dispatches to and the CPU itself
    (oneDNN picks its kernels and blocking by CPU: an AMD and an Intel CPU, both AVX-512, round differently)."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_model(),
        "native_bf16": cpu_bf16_flags(),
    }


def run(name: str, output_dir: Path) -> subprocess.CompletedProcess:
    recipe, *args = RUNS[name]
    command = [sys.executable, str(ROOT / "recipes" / recipe), *COMMON, *(a for group in args for a in group)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command += ["--output_dir", str(output_dir)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def fingerprint(output_dir: Path) -> dict:
    """SHA-256 of all tensors of the final checkpoint, and per-tensor (sum, L2 norm) in float64."""
    tensors = load_file(output_dir / "checkpoints" / f"step_{STEPS}" / "model.safetensors")
    digest = hashlib.sha256()
    stats = {}
    for key in sorted(tensors):
        tensor = tensors[key].contiguous()
        digest.update(key.encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        values = tensor.double()
        stats[key] = [values.sum().item(), values.norm().item()]
    return {"sha256": digest.hexdigest(), "stats": stats}


def record() -> None:
    results = {"machine": machine(), "steps": STEPS, "runs": {}}
    for name in RUNS:
        with tempfile.TemporaryDirectory() as folder:
            result = run(name, Path(folder))
            if result.returncode:
                raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
            results["runs"][name] = fingerprint(Path(folder))
        print(f"{name}: {results['runs'][name]['sha256'][:16]}")
    REFERENCE.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="run every reference run and store it")
    if parser.parse_args().record:
        record()
