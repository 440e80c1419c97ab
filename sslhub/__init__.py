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

from .hub.zoo import from_zoo
from .models import (
    ColorizationConfig,
    ColorizationForImageClassification,
    ColorizationForPreTraining,
    ColorizationModel,
    MoCoConfig,
    MoCoForImageClassification,
    MoCoForPreTraining,
    MoCoModel,
    StudentConfig,
    StudentForDistillation,
    StudentForImageClassification,
    StudentModel,
    image_processor_for,
)

__version__ = "0.2.0"

AutoConfig.register(MoCoConfig.model_type, MoCoConfig, exist_ok=True)
AutoModel.register(MoCoConfig, MoCoModel, exist_ok=True)
AutoModelForPreTraining.register(MoCoConfig, MoCoForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MoCoConfig, MoCoForImageClassification, exist_ok=True)
AutoConfig.register(StudentConfig.model_type, StudentConfig, exist_ok=True)
AutoModel.register(StudentConfig, StudentModel, exist_ok=True)
# Loads without a teacher; attach one with `set_teacher` (or pass precomputed `teacher_embeddings`).
AutoModelForPreTraining.register(StudentConfig, StudentForDistillation, exist_ok=True)
AutoModelForImageClassification.register(StudentConfig, StudentForImageClassification, exist_ok=True)
AutoConfig.register(ColorizationConfig.model_type, ColorizationConfig, exist_ok=True)
AutoModel.register(ColorizationConfig, ColorizationModel, exist_ok=True)
AutoModelForPreTraining.register(ColorizationConfig, ColorizationForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(
    ColorizationConfig, ColorizationForImageClassification, exist_ok=True
)

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
    "from_zoo",
    "image_processor_for",
]
