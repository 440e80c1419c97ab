"""Evaluation results: `results.json` and the model card's `model-index`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def metric_name(protocol: str, k: int = 200, temperature: float = 0.1, qualifier: str = "") -> str:
    """The name a protocol's top-1 accuracy goes by in results and model cards; `qualifier` says which
    labels it used (`"1% labels"`, `"classes bird/cat"`), so that such results sit next to the others."""
    names = {
        "knn": f"kNN top-1 (k={k}, T={temperature:g})",
        "linear": "linear probe top-1",
        "linear-fast": "linear probe top-1 (one setting)",
        "finetune": "fine-tuning top-1",
    }
    if protocol not in names:
        raise ValueError(f"protocol must be one of {list(names)}, got {protocol!r}")
    return f"{names[protocol]}, {qualifier}" if qualifier else names[protocol]


def write_results(output_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write `results` (accuracy and settings) as `output_dir/results.json` and return its path."""
    path = Path(output_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    return path


def card_eval_results(
    accuracy: float,
    protocol: str,
    dataset_name: str,
    dataset_type: str,
    dataset_split: str,
    k: int = 200,
    temperature: float = 0.1,
    qualifier: str = "",
) -> list[dict[str, Any]]:
    """The `model-index` entries of one evaluation, as `sslhub.hub.update_card_eval_results` takes them
    (`qualifier`: see `metric_name`)."""
    return [
        {
            "task_type": "image-classification",
            "dataset_name": dataset_name,
            "dataset_type": dataset_type,
            "dataset_split": dataset_split,
            "metric_type": "accuracy",
            "metric_name": metric_name(protocol, k, temperature, qualifier),
            "metric_value": round(float(accuracy), 4),
        }
    ]


def update_model_card(folder: str | os.PathLike, entries: list[dict[str, Any]]) -> bool:
    """Merge `entries` into the `model-index` of the model card in `folder` (via `sslhub.hub`).

    Returns:
        False, and changes nothing, when `sslhub.hub` is not available.
    """
    try:
        from ..hub import update_card_eval_results
    except ImportError:
        return False
    update_card_eval_results(folder, entries)
    return True
