"""The precision of a run, decided from the device it runs on.

`auto` (the default of every recipe) trains in bf16 autocast where the device computes bf16 natively
(a CUDA GPU with bf16 support, a CPU with AVX512-BF16 or AMX whose kernels torch may use, or a CPU where a
short matmul probe shows bf16 at least as fast as fp32) and in fp32 everywhere else. On a CPU without
native bf16 the arithmetic is emulated: a 2048^3 matmul ran at 0.28 GFLOP/s in bf16 against 142 GFLOP/s in
fp32 on an AVX2-only machine, so forcing bf16 there turns minutes into hours. A CPU's bf16 instructions
help only if torch's kernels use them: where oneDNN is capped (`ONEDNN_MAX_CPU_ISA`) or ATen's kernels run
below AVX-512 (`ATEN_CPU_CAPABILITY`, or a build without them), the probe decides (capped at AVX2 on an AMX
machine, a 256^3 matmul ran at 2.0 GFLOP/s in bf16 against 223 in fp32). fp16 (with a gradient scaler) is
used only when asked for.

Who decides, in order: the recipe's `mixed_precision` setting when it is set; else the launcher's
(`accelerate launch --mixed_precision ...` or the `mixed_precision` of the accelerate config file it
used); else `auto`.
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "no", "bf16", "fp16")
X86 = ("x86_64", "amd64", "i386", "i686")
ONEDNN_ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # environment variables that cap oneDNN
PROBE_CACHE = Path(os.environ.get("SSLHUB_CACHE", Path.home() / ".cache" / "sslhub")) / "bf16_probe.json"


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses (Accelerate's name: `"no"` is fp32) and why."""

    mode: str
    reason: str


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 instruction sets torch reports: `avx512_bf16`, `amx` (x86 only)."""
    found = []
    for name, check in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx", "_is_amx_tile_supported")):
        probe = getattr(torch.cpu, check, None)  # private torch API: absent in some versions
        try:
            if probe is not None and probe():
                found.append(name)
        except RuntimeError:
            pass
    return found


def cpu_kernel_caps() -> list[str]:
    """What keeps torch's CPU kernels below the CPU's instruction sets, if anything: a oneDNN ISA cap, or
    ATen's kernels (capped by `ATEN_CPU_CAPABILITY`, or so built) below AVX-512."""
    caps = [
        f"{name}={os.environ[name]}"
        for name in ONEDNN_ISA_CAPS
        if os.environ.get(name, "ALL").upper() != "ALL"
    ]
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() in X86 and not capability.upper().startswith(("AVX512", "AMX")):
        caps.append(f"ATen kernels {capability}")
    return caps


def matmul_rates(dtype: torch.dtype, size: int = 256, repeats: int = 3) -> float:
    """GFLOP/s of a `size`^3 matmul in `dtype` on the CPU (best of `repeats`)."""
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    b = a.clone()
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / max(best, 1e-9) / 1e9


@cache
def cpu_bf16_probe() -> tuple[float, float]:
    """(bf16, fp32) matmul GFLOP/s on this CPU, measured once and cached on disk per CPU, torch version and
    kernel caps."""
    kernels = ",".join(cpu_kernel_caps()) or torch.backends.cpu.get_cpu_capability()
    key = f"{platform.machine()}|{platform.processor()}|{cpu_model()}|{torch.__version__}|{kernels}"
    try:
        cached = json.loads(PROBE_CACHE.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return tuple(cached[key])
    rates = (matmul_rates(torch.bfloat16), matmul_rates(torch.float32))
    try:
        PROBE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        PROBE_CACHE.write_text(json.dumps({**cached, key: rates}))
    except OSError:
        pass
    return rates


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether `device` computes bf16 natively, and how that was decided."""
    if device.type == "cuda":
        try:
            supported = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no `including_emulation`
            supported = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return supported, f"{name} {'supports' if supported else 'does not support'} bf16"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        caps = cpu_kernel_caps() if flags else []
        if flags and not caps:
            return True, f"this CPU has native bf16 ({', '.join(flags).upper()})"
        if not flags and platform.machine().lower() in X86:
            return False, "this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 would be emulated"
        bf16, fp32 = cpu_bf16_probe()
        native = bf16 >= fp32
        why = f"a matmul probe on this CPU ran bf16 at {bf16:.1f} and fp32 at {fp32:.1f} GFLOP/s"
        if caps:
            why = f"this CPU has {', '.join(flags).upper()} but torch's kernels are capped ({', '.join(caps)}); {why}"
        return native, why
    return False, f"no native bf16 known for {device.type} devices"


def launcher_precision() -> str | None:
    """The precision `accelerate launch` chose, if it was chosen explicitly (flag or config file).

    The launcher always exports `ACCELERATE_MIXED_PRECISION`, with `"no"` when nothing was asked for; a
    `"no"` counts only when its command line or config file says so.
    """
    value = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if value is None or value.lower() != "no":
        return value.lower() if value else None
    argv = _launcher_argv()
    if any(token.split("=")[0] in ("--mixed_precision", "--mixed-precision") for token in argv):
        return "no"
    config_file = None
    for flag in ("--config_file", "--config-file"):
        if flag in argv[:-1]:
            config_file = argv[argv.index(flag) + 1]
    if config_file is None:
        try:
            from accelerate.commands.config import default_config_file

            config_file = default_config_file
        except ImportError:
            return None
    try:
        import yaml

        config = yaml.safe_load(Path(config_file).read_text()) or {}
    except (OSError, ValueError):
        return None
    return "no" if str(config.get("mixed_precision", "")).lower() == "no" else None


def _launcher_argv() -> list[str]:
    """The command line of the parent process (the launcher), where the OS tells it."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def resolve_precision(requested: str | None, device: torch.device) -> PrecisionChoice:
    """The precision of a run on `device`.

    Args:
        requested: the recipe's `mixed_precision`: `"auto"`, `"no"`, `"bf16"`, `"fp16"`, or `None` (unset:
            the launcher's explicit choice, else auto).
        device: the device the run trains on.

    Returns:
        A `PrecisionChoice`. An explicit `bf16` on a CPU without native bf16 is kept, with a warning that
        gives the measured slowdown.
    """
    source = "set by the recipe"
    if requested is None:
        requested = launcher_precision()
        source = "set by accelerate launch"
        if requested is None:
            requested, source = "auto", "auto"
    if requested not in PRECISIONS and requested != "fp8":
        raise ValueError(f"mixed_precision must be one of {list(PRECISIONS)}, got {requested!r}")
    native, why = native_bf16(device)
    if requested == "auto":
        return PrecisionChoice("bf16" if native else "no", f"auto: {why}")
    if requested == "bf16" and not native and device.type == "cpu":
        bf16, fp32 = cpu_bf16_probe()
        warnings.warn(
            f"mixed_precision=bf16 on a CPU without native bf16: a matmul runs at {bf16:.2f} GFLOP/s in bf16 "
            f"against {fp32:.1f} in fp32 here ({fp32 / max(bf16, 1e-9):.0f}x slower). Use mixed_precision=auto "
            "or no.",
            stacklevel=2,
        )
    return PrecisionChoice(requested, f"{source}; {why}")


def describe(choice: PrecisionChoice) -> str:
    """One line for the start of a run: the precision and why."""
    name = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + gradient scaler"}.get(choice.mode)
    return f"precision: {name or choice.mode} ({choice.reason})"


__all__ = [
    "PRECISIONS",
    "PrecisionChoice",
    "cpu_bf16_flags",
    "cpu_bf16_probe",
    "cpu_kernel_caps",
    "cpu_model",
    "describe",
    "launcher_precision",
    "native_bf16",
    "resolve_precision",
]
