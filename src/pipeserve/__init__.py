"""pipeserve: run and serve pretrained transformer models with native PyTorch implementations."""

from .errors import PipeserveError
from .models.auto import LoadedModel, load_model

__all__ = ["LoadedModel", "PipeserveError", "load_model"]
__version__ = "0.1.0"
