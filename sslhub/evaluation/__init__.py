"""Evaluating self-supervised features with the field's protocols.

- `reference`: load any model by name (sslhub, `timm:<name>`, transformers) with its preprocessing.
- `features`: features of a whole dataset, gathered across processes; the cache of computed tensors.
- `knn`: weighted kNN (InstDisc). `linear`: the linear probe on frozen features.
- `finetune`: a new linear head on any model; classifier predictions and accuracy.
- `labels`: a class-balanced labelled fraction, coarser label groupings, class subsets; confusion matrices.
- `results`: `results.json` and the model card's `model-index`. `plots`: embedding maps, retrieval grids,
  training curves.
"""

from .features import cache_key, cached_features, cached_tensors, embedded_batches, extract_features
from .finetune import (
    LinearClassifier,
    classifier_accuracy,
    classifier_logits,
    classifier_predictions,
    load_classifier,
)
from .knn import knn_accuracy, knn_predict, nearest_neighbours
from .labels import (
    CLASS_SETS,
    LABEL_GROUPINGS,
    LabelSelection,
    confusion_matrix,
    resolve_classes,
    resolve_label_map,
    select_labels,
)
from .linear import LinearProbeResult, LinearSweepResult, linear_probe, linear_probe_sweep, stratified_split
from .reference import (
    TIMM_PREFIX,
    ModelReference,
    check_model,
    embed,
    load_encoder,
    load_model,
)
from .results import card_eval_results, metric_name, update_model_card, write_results

__all__ = [
    "CLASS_SETS",
    "LABEL_GROUPINGS",
    "LabelSelection",
    "TIMM_PREFIX",
    "LinearClassifier",
    "LinearProbeResult",
    "LinearSweepResult",
    "ModelReference",
    "cache_key",
    "cached_features",
    "cached_tensors",
    "card_eval_results",
    "check_model",
    "classifier_accuracy",
    "classifier_logits",
    "classifier_predictions",
    "confusion_matrix",
    "embed",
    "embedded_batches",
    "extract_features",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "linear_probe_sweep",
    "stratified_split",
    "load_classifier",
    "load_encoder",
    "load_model",
    "metric_name",
    "nearest_neighbours",
    "resolve_classes",
    "resolve_label_map",
    "select_labels",
    "update_model_card",
    "write_results",
]
