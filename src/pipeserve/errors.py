"""pipeserve's exception types.

Every error a user can cause (a wrong path, a corrupt file, an invalid parameter) is raised as one of
these, with a message that says what was wrong, what was expected and how to fix it. Catch
`PipeserveError` to catch them all.
"""

from __future__ import annotations


class PipeserveError(Exception):
    """Base class of every error pipeserve raises on purpose."""


class InvalidInputError(PipeserveError, ValueError):
    """An input or parameter a caller passed is invalid (empty prompt, out-of-range value)."""


class ModelNotFoundError(PipeserveError, FileNotFoundError):
    """A model id or path could not be resolved to files (lists every place looked in)."""


class ConfigError(PipeserveError, ValueError):
    """A model's config (config.json or GGUF metadata) is missing fields or holds invalid values."""


class WeightsError(PipeserveError, ValueError):
    """A weights file is missing, truncated, corrupt, or does not match the model's config."""


class UnsupportedArchitectureError(PipeserveError, ValueError):
    """The checkpoint's architecture has no native implementation in pipeserve."""


class UnsupportedQuantizationError(WeightsError):
    """A GGUF tensor uses a quantisation type pipeserve cannot dequantise."""


class TokenizerError(PipeserveError, ValueError):
    """A tokenizer could not be built, or was asked something it cannot do."""


class ChatTemplateError(TokenizerError):
    """A chat template is missing, invalid, or failed while rendering."""


class DeviceError(PipeserveError, ValueError):
    """A device or dtype argument is invalid or not available on this machine."""
