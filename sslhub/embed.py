"""Embedding a folder of images with a saved model, and reading the embeddings back.

Any model folder or Hub id that `AutoModel` loads (sslhub or timm format) with its image processor.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from transformers import AutoModel

from .data import IMAGE_EXTENSIONS
from .hub.folders import resolve_model_dir


def list_images(image_dir: str | os.PathLike) -> list[Path]:
    """Image files under `image_dir` (recursive, the extensions of `sslhub.data.IMAGE_EXTENSIONS`), sorted."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"{image_dir} is not a folder of images")
    return sorted(p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def embed_images(
    model: str | os.PathLike,
    image_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    batch_size: int = 32,
    output_key: str = "pooler_output",
    device: str | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[str]]:
    """Embed every image of a folder and save the embeddings with the file list.

    Args:
        model: a model folder or Hub id (sslhub or timm format).
        image_dir: the folder, searched recursively.
        output: a `.safetensors` file (tensor `embeddings`, metadata `files` as JSON) or `.npz`
            (arrays `embeddings` and `files`).
        batch_size: images per forward pass.
        output_key: which model output to save (`"pooler_output"` or `"projection"`).
        device: torch device; CUDA when available, else CPU.
        progress: show a tqdm progress bar.

    Returns:
        `(embeddings (N, D), files)`: `files` relative to `image_dir`, unreadable files left out (each
        named in a warning).

    Raises:
        ValueError: a wrong `output` suffix, a folder without readable images, or an unknown `output_key`.
    """
    from PIL import Image
    from tqdm.auto import tqdm
    from transformers import AutoImageProcessor

    output = Path(output)
    if output.suffix not in (".safetensors", ".npz"):
        raise ValueError(f"output must end in .safetensors or .npz, got {output.name}")
    paths = list_images(image_dir)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {image_dir}")
    model_dir = resolve_model_dir(model)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = AutoModel.from_pretrained(model_dir).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    embeddings, files = [], []
    for start in tqdm(range(0, len(paths), batch_size), desc="embedding", unit="batch", disable=not progress):
        images = []
        for path in paths[start : start + batch_size]:
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
                files.append(str(path.relative_to(image_dir)))
            except OSError as error:
                warnings.warn(f"skipped unreadable image {path}: {error}", stacklevel=2)
        if not images:
            continue
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        with torch.inference_mode():
            result = net(pixel_values=pixel_values)
        if getattr(result, output_key, None) is None:
            raise ValueError(f"the model has no {output_key!r} output")
        embeddings.append(result[output_key].float().cpu())
    if not embeddings:
        raise ValueError(f"none of the {len(paths)} image files under {image_dir} could be read")
    stacked = torch.cat(embeddings)  # (N, D)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {"files": json.dumps(files), "model": str(model), "output_key": output_key}
        save_file({"embeddings": stacked.contiguous()}, str(output), metadata=metadata)
    else:
        import numpy as np

        np.savez(output, embeddings=stacked.numpy(), files=np.array(files))
    return stacked, files


def load_embeddings(path: str | os.PathLike) -> tuple[torch.Tensor, list[str]]:
    """Read an embeddings file written by `embed_images`: `(embeddings (N, D), files)`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("embeddings"), json.loads(f.metadata()["files"])
    import numpy as np

    with np.load(path) as data:
        return torch.from_numpy(data["embeddings"]), [str(name) for name in data["files"]]
