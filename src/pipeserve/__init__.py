"""pipeserve: run and serve pretrained transformer models with native PyTorch implementations."""

from .errors import PipeserveError
from .models.auto import LoadedModel, load_model
from .processing.tokenizer import Tokenizer

__all__ = ["LoadedModel", "PipeserveError", "Tokenizer", "load_model"]
__version__ = "0.1.0"
