"""sslhub: self-supervised vision models (MoCo, distilled students, colorization) as transformers models.

Importing sslhub registers every config and model with transformers' Auto classes, so that
`AutoConfig`, `AutoModel`, `AutoModelForPreTraining` and `AutoModelForImageClassification` load them.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_moco import MoCoConfig
from .modeling_common import image_processor_for
from .modeling_moco import MoCoForImageClassification, MoCoForPreTraining, MoCoModel

__version__ = "0.1.0"

AutoConfig.register(MoCoConfig.model_type, MoCoConfig, exist_ok=True)
AutoModel.register(MoCoConfig, MoCoModel, exist_ok=True)
AutoModelForPreTraining.register(MoCoConfig, MoCoForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MoCoConfig, MoCoForImageClassification, exist_ok=True)

__all__ = [
    "MoCoConfig",
    "MoCoForImageClassification",
    "MoCoForPreTraining",
    "MoCoModel",
    "image_processor_for",
]
