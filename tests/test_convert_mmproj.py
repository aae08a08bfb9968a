"""The converted mmproj encodes like the reference encoders (checks every vision and audio tensor mapping).

Vision: an image with sides multiple of 28 (no resampling on either side), mtmd's embeddings against
the reference visual encoder; windowed and full-attention block layouts across the variants.
Audio: stock mtmd always encodes 30 s windows with full attention, while the reference attends within
2 s windows (n_window=100). To test the *weights* rather than that known runtime difference, the
reference here reads a copy of config.json with n_window=1500 (one 30 s window) and gets exactly 30 s
of audio; the windowing gap itself belongs to the audio-parity tests of the runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_convert_files import Thinker, audio_bitmap, converted, image_bitmap, mtmd_embeddings

# Measured gaps (of max|embedding|): vision 4.6e-4 .. 5.0e-4 (clip's merger runs the tanh GELU, the
# reference the erf one), audio 5e-5 (mtmd's own log-mel, f16 im2col in the convs).
VISION_RTOL = 2e-3
AUDIO_RTOL = 1e-3


def _with_config(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (dst / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("variant", ["base", "gqa4", "odd"])
def test_vision_embeddings_match_reference(variant: str) -> None:
    from omni_fixtures import build_checkpoint, load_processor, load_reference
    from PIL import Image

    torch.set_num_threads(1)
    img = (np.random.default_rng(7).random((168, 224, 3)) * 255).astype(np.uint8)
    path = build_checkpoint(variant)
    proc = load_processor(path).image_processor
    px = proc(images=[Image.fromarray(img)], return_tensors="pt")
    assert px["image_grid_thw"].tolist() == [[1, 12, 16]]  # no resize: 168 x 224 is a multiple of 28
    with torch.no_grad():
        ref = load_reference(path).thinker.model.visual(px["pixel_values"], grid_thw=px["image_grid_thw"])
    ref = ref.pooler_output.numpy()
    out = converted(variant)
    th = Thinker(out / "thinker-f32.gguf")
    try:
        emb = mtmd_embeddings(th, out / "mmproj-f32.gguf", image_bitmap(img))
    finally:
        th.close()
    assert emb.shape == ref.shape == (48, th.n_embd)
    gap = np.abs(emb - ref).max() / np.abs(ref).max()
    print(f"{variant}: vision relative gap {gap:.3g}")
    assert gap <= VISION_RTOL


@pytest.mark.parametrize("variant", ["base", "odd"])
def test_audio_embeddings_match_reference_on_one_window(variant: str, tmp_path: Path) -> None:
    from omni_fixtures import build_checkpoint, load_processor, load_reference

    torch.set_num_threads(1)
    n = 30 * 16000
    t = np.arange(n) / 16000
    rng = np.random.default_rng(3)
    wav = (0.3 * np.sin(2 * np.pi * 330 * t) * np.sin(2 * np.pi * 0.5 * t) + 0.05 * rng.standard_normal(n))
    wav = wav.astype(np.float32)
    src = build_checkpoint(variant)
    one_window = _with_config(
        src, tmp_path / "hf", lambda c: c["thinker_config"]["audio_config"].update(n_window=1500))
    fe = load_processor(src).feature_extractor
    feats = fe(wav, sampling_rate=16000, return_tensors="pt", padding="max_length",
               return_attention_mask=True)
    frames = int(feats["attention_mask"][0].sum())
    assert frames == 3000
    with torch.no_grad():
        tower = load_reference(one_window).thinker.model.audio_tower
        ref = tower(feats["input_features"][0, :, :frames], feature_lens=torch.tensor([frames]))
    ref = ref.last_hidden_state.numpy()
    out = converted(variant)
    th = Thinker(out / "thinker-f32.gguf")
    try:
        emb = mtmd_embeddings(th, out / "mmproj-f32.gguf", audio_bitmap(wav))
    finally:
        th.close()
    assert ref.shape == (750, th.n_embd) and emb.shape[0] >= 750  # mtmd adds a window of padding
    gap = np.abs(emb[:750] - ref).max() / np.abs(ref).max()
    print(f"{variant}: audio relative gap {gap:.3g}")
    assert gap <= AUDIO_RTOL
