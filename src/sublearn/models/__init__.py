"""The model layer: one interface (`ChatModel`), several implementations.

Stages talk only to `ChatModel`; `load_model` picks the implementation. The Hugging Face
backend serves both the embedded tiny base and a 7B model on a GPU; vLLM and the OpenAI API
are later implementations of the same protocol, imported lazily.
"""

from sublearn.models.base import ChatModel, Messages, SamplingConfig
from sublearn.models.registry import load_model

__all__ = ["ChatModel", "Messages", "SamplingConfig", "load_model"]
