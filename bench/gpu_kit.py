"""Pack what `bench/gpu_check.sh` needs on a GPU machine that cannot reach PyPI: `python bench/gpu_kit.py`.

The lent H200 machine (`../.library/device/KINDS.md`) has Python 3.12 with torch, timm, transformers,
accelerate and huggingface-hub, but not `datasets` nor lightly, and nothing can be installed there from the
network. This script, run here where PyPI answers, writes into `.gpu/` (git-ignored):

- `wheels/`: the distributions sslhub and lightly need (walked from this environment's installed metadata,
  at the versions installed here) that the machine's image lacks, as wheels for its Python;
- `cifar10/train.parquet`: the shared CIFAR-10 training split, when it is beside the checkout, so the
  2-minute MoCo run trains on CIFAR-10 rather than the 5,000-image sample.

`bench/gpu_check.sh` installs the wheels into a temporary folder and reads the data when `.gpu/` is there.
The device call (one run, about 10 minutes; `run`'s `carry` takes the ignored folder along):

    run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=600)
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from cifar10_split import CIFAR10  # noqa: E402

# The Python packages of the H200 machine's image, as KINDS.md lists them (read there on 2026-11-17). A kit
# carries only what is not among them: the image's own torch, CUDA libraries and compiled packages stay.
DEVICE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
"""

# The wheel tags pip may take for the machine (its glibc is recent; pip matches each manylinux tag exactly).
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35, 39)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]


def requirement_closure(roots: list[str], present: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every distribution the `roots` need, with its version installed here (extras' needs left out).

    Distributions in `present` (canonical names) are listed with their version here but not walked into: the
    machine that has them has their own needs too. Raises `SystemExit` naming what is needed but not installed
    here, since the kit packs the versions tested here.
    """
    found: dict[str, str] = {}
    missing: set[str] = set()
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found or name in missing:
            continue
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            if name not in present:
                missing.add(name)
            continue
        found[name] = distribution.version
        if name in present:
            continue
        for line in distribution.requires or []:
            needed = Requirement(line)
            if needed.marker is None or needed.marker.evaluate({"extra": ""}):
                todo.append(needed)
    if missing:
        raise SystemExit(
            f"error: not installed here: {', '.join(sorted(missing))}; the kit packs this environment's "
            "versions (pip install -e '.[bench]' first)"
        )
    return found


def kit_distributions(roots: list[str], device_packages: str = DEVICE_PACKAGES) -> dict[str, str]:
    """The distributions of `roots`' closure that the machine lacks, `{name: version}` (sslhub itself excluded:
    it runs from the checkout)."""
    present = frozenset(canonicalize_name(name) for name in device_packages.split())
    closure = requirement_closure(roots, present)
    return {name: version for name, version in closure.items() if name not in present | {"sslhub"}}


def download(distributions: dict[str, str], folder: Path, python_version: str) -> None:
    """Each distribution's wheel for the machine's Python; one published only as source is built here into a
    wheel, which must then be pure Python (`py3-none-any`) to run there."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    wheel_for = [
        "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
        "--implementation", "cp", "--dest", str(folder),
    ]  # fmt: skip
    for platform in PLATFORMS:
        wheel_for += ["--platform", platform]
    for name, version in sorted(distributions.items()):
        pinned = f"{name}=={version}"
        if subprocess.run([*pip, *wheel_for, pinned], capture_output=True, text=True).returncode == 0:
            continue
        with tempfile.TemporaryDirectory() as built:
            subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", built, pinned], check=True)
            (wheel,) = Path(built).glob("*.whl")
            if not wheel.name.endswith("-none-any.whl"):
                raise SystemExit(
                    f"error: {pinned} has no wheel for Python {python_version} and builds no pure one"
                )
            shutil.copy(wheel, folder / wheel.name)
        print(f"  {pinned}: no wheel published; built the pure-Python {wheel.name} here")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu", help="the kit's folder (default: .gpu)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default: 3.12)")
    parser.add_argument("--no-data", action="store_true", help="leave the CIFAR-10 parquet out")
    args = parser.parse_args(argv)
    distributions = kit_distributions(["sslhub", "lightly"])
    print(
        f"wheels for Python {args.python_version}: {', '.join(f'{n}=={v}' for n, v in sorted(distributions.items()))}"
    )
    shutil.rmtree(args.out / "wheels", ignore_errors=True)
    download(distributions, args.out / "wheels", args.python_version)
    if not args.no_data and CIFAR10.exists():
        (args.out / "cifar10").mkdir(parents=True, exist_ok=True)
        shutil.copy(CIFAR10, args.out / "cifar10" / "train.parquet")
    size = sum(path.stat().st_size for path in args.out.rglob("*") if path.is_file())
    print(
        f"wrote {args.out} ({size / 2**20:.1f} MiB; the device tool carries at most 64 MiB with the checkout)"
    )


if __name__ == "__main__":
    main()
