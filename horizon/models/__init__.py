"""Vision LLMs horizon can load, and the adapters that describe each family.

One module per family registers its :class:`Adapter` for the transformers
``model_type`` values it serves; importing this package registers them all.
"""

from __future__ import annotations

from . import gemma3, idefics3, internvl, llava, llava_next, mistral3, qwen3_vl, qwen_vl  # noqa: F401  (registers the families)
from .adapter import ADAPTERS, Adapter, adapter_for, missing_methods, register_adapter, supported_model_types
from .llava import LlavaAdapter
from .qwen_vl import QwenVLAdapter, QwenVLImageProcessor
from .vlm import DTYPES, VisionLM, load, read_config, refuse_extra_images, resolve_device, resolve_dtype

__all__ = [
    "ADAPTERS", "Adapter", "DTYPES", "LlavaAdapter", "QwenVLAdapter", "QwenVLImageProcessor", "VisionLM",
    "adapter_for", "load", "missing_methods", "read_config", "refuse_extra_images", "register_adapter",
    "resolve_device", "resolve_dtype", "supported_model_types",
]
