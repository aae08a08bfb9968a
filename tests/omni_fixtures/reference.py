"""Load a (tiny) checkpoint folder with the transformers reference, offline."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def has_video_processor() -> bool:
    """transformers' video processors need torchvision (absent here: no CPU build for torch 2.13)."""
    return importlib.util.find_spec("torchvision") is not None


def load_reference(path: str | Path):
    """`Qwen2_5OmniForConditionalGeneration` in float32 eval mode, speakers loaded (spk_dict.pt).

    `model.generate(**inputs)` returns (sequences, waveform); pass `generation_mode="text"` for text
    only, `thinker_max_new_tokens`/`talker_max_new_tokens` to keep it short, and seed torch for the
    talker's sampling and the DiT noise.
    """
    _offline()
    import torch
    from transformers import Qwen2_5OmniForConditionalGeneration

    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(
        str(path), dtype=torch.float32, local_files_only=True)
    model.float().eval()
    if set(model.speaker_map) != {"Chelsie", "Ethan"}:
        raise RuntimeError(f"speakers not loaded from {path}/spk_dict.pt: {list(model.speaker_map)}")
    return model


def load_processor(path: str | Path):
    """`Qwen2_5OmniProcessor` (tokenizer, image processor, Whisper features, video processor), offline.

    Without torchvision the processor is assembled from its parts with `video_processor=None`: text,
    images and audio work exactly as in the reference; passing `videos=` raises.
    """
    _offline()
    from transformers import Qwen2_5OmniProcessor

    if has_video_processor():
        return Qwen2_5OmniProcessor.from_pretrained(str(path), local_files_only=True)
    from transformers import AutoImageProcessor, AutoTokenizer, WhisperFeatureExtractor

    class _ProcessorWithoutVideo(Qwen2_5OmniProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    path = str(path)
    template = json.loads((Path(path) / "chat_template.json").read_text())["chat_template"]
    return _ProcessorWithoutVideo(
        image_processor=AutoImageProcessor.from_pretrained(path, local_files_only=True),
        video_processor=None,
        feature_extractor=WhisperFeatureExtractor.from_pretrained(path, local_files_only=True),
        tokenizer=AutoTokenizer.from_pretrained(path, local_files_only=True),
        chat_template=template,
    )
