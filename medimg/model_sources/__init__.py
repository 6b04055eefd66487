"""Where models come from: medimg checkpoints, MONAI bundles, TorchScript and ``torch.export``
files with a model card; one loader for every command (:func:`load_model`)."""

from medimg.model_sources.adapters import ModelAdapter
from medimg.model_sources.card import ModelCardError, read_card
from medimg.model_sources.loader import ModelSourceError, load_model, model_kind, model_sha256
from medimg.model_sources.monai_config import UntrustedConfigError

__all__ = [
    "ModelAdapter",
    "ModelCardError",
    "ModelSourceError",
    "UntrustedConfigError",
    "load_model",
    "model_kind",
    "model_sha256",
    "read_card",
]
