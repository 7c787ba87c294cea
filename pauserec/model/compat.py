"""The names that differ between the transformers versions the workbench supports -- chosen once,
here.

Supported: transformers 5.17 (the GPU image's, with torch 2.11) up to the venv's 5.x. The KV cache
is passed to a causal LM and read back from its output as ``past_key_values`` up to 5.2x and as
``cache`` later; :data:`CACHE` is whichever the installed version uses, read off its output class,
and :func:`forward` is the one call that passes and returns it. Nothing else in the workbench names
either.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

import torch
import transformers
from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


# What a GPU run prints first and records: the versions the workbench's behaviour depends on.
VERSIONS = (
    f"python {platform.python_version()}, torch {torch.__version__}, transformers "
    f"{transformers.__version__} (KV-cache keyword {CACHE!r}), tokenizers "
    f"{_version('tokenizers')}, accelerate {_version('accelerate')}, huggingface_hub "
    f"{_version('huggingface_hub')}, gguf {_version('gguf')}"
)


def forward(model, cache, **inputs: Any) -> tuple[Any, Any]:
    """``model(**inputs)`` continuing from ``cache`` (a ``DynamicCache``): (the output, its
    cache)."""
    out = model(**inputs, **{CACHE: cache}, use_cache=True)
    return out, getattr(out, CACHE)
