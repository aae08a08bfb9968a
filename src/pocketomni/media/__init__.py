"""User media -> model-ready inputs: images, audio and video (numpy + Pillow; PyAV optional for video files)."""

from pocketomni.media.audio import (
    SAMPLE_RATE,
    AudioConfig,
    PreparedAudio,
    load_audio,
    prepare_audio,
    resample,
)
from pocketomni.media.image import ImageConfig, PreparedImage, load_image, prepare_image, smart_resize
from pocketomni.media.video import PreparedVideo, VideoConfig, prepare_video

__all__ = [
    "SAMPLE_RATE",
    "AudioConfig",
    "ImageConfig",
    "PreparedAudio",
    "PreparedImage",
    "PreparedVideo",
    "VideoConfig",
    "load_audio",
    "load_image",
    "prepare_audio",
    "prepare_image",
    "prepare_video",
    "resample",
    "smart_resize",
]
