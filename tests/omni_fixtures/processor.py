"""preprocessor_config.json and chat_template.json of the Qwen2.5-Omni repo (image, video, audio)."""

from __future__ import annotations

import json
from pathlib import Path

from .tokenizer import CHAT_TEMPLATE

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# One file serves Qwen2VLImageProcessor, the video processor and WhisperFeatureExtractor, as on the hub.
PREPROCESSOR_CONFIG: dict = {
    "chunk_length": 300,
    "dither": 0.0,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_std": CLIP_STD,
    "max_pixels": 12845056,
    "merge_size": 2,
    "min_pixels": 3136,
    "n_fft": 400,
    "n_samples": 4800000,
    "nb_max_frames": 30000,
    "padding_side": "right",
    "padding_value": 0.0,
    "patch_size": 14,
    "processor_class": "Qwen2_5OmniProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "return_attention_mask": True,
    "sampling_rate": 16000,
    "temporal_patch_size": 2,
}


def write_processor_files(out: Path) -> None:
    """Write preprocessor_config.json and chat_template.json into `out`."""
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    (out / "chat_template.json").write_text(
        json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2, ensure_ascii=False) + "\n")
