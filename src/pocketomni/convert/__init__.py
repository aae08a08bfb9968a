"""Hugging Face Qwen2.5-Omni checkpoint -> GGUF files for llama.cpp / mtmd (no torch, no transformers).

    from pocketomni.convert import convert_checkpoint
    convert_checkpoint("Qwen2.5-Omni-7B", "models/omni-7b", quant="q4_k_m", mmproj_quant="f16")
"""

from __future__ import annotations

from pocketomni.convert.pipeline import ConversionResult, convert_checkpoint
from pocketomni.engine.manifest import locate_model_files, read_manifest

__all__ = ["ConversionResult", "convert_checkpoint", "locate_model_files", "read_manifest"]
