"""The model side of sslhub: everything that travels with the weights to the Hub.

The files are flat and import only torch, timm, transformers and each other (`from .module import name`):
`save_pretrained` + `sslhub.hub.add_remote_code` copy a modeling file and its import closure next to the
weights, so a pushed MoCo model carries the MoCo files only and loads with `trust_remote_code=True` where
sslhub is not installed.

- `backbones`: the one seam to timm; `heads`: projection and prediction MLPs; `momentum`: EMA and queue;
  `distributed`: gathers and shuffle-BN with a one-process fallback.
- `losses_contrastive`, `losses_distillation`, `losses_colorization`: one family each.
- `configuration_*` / `modeling_*`: MoCo, distilled students, colorization (`color`: Lab and the ab bins).
"""

from .configuration_colorization import ColorizationConfig
from .configuration_moco import MoCoConfig
from .configuration_student import StudentConfig
from .modeling_colorization import (
    ColorizationForImageClassification,
    ColorizationForPreTraining,
    ColorizationModel,
)
from .modeling_common import image_processor_for
from .modeling_moco import MoCoForImageClassification, MoCoForPreTraining, MoCoModel
from .modeling_student import StudentForDistillation, StudentForImageClassification, StudentModel

__all__ = [
    "ColorizationConfig",
    "ColorizationForImageClassification",
    "ColorizationForPreTraining",
    "ColorizationModel",
    "MoCoConfig",
    "MoCoForImageClassification",
    "MoCoForPreTraining",
    "MoCoModel",
    "StudentConfig",
    "StudentForDistillation",
    "StudentForImageClassification",
    "StudentModel",
    "image_processor_for",
]
