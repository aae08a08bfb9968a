"""MtmdContext on the converted tiny checkpoint: encoding, token counts, our placement vs stock mtmd."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_backend_tinymodel import TinySpec, build_tiny_gguf, converted_tiny

from pocketomni.backend.context import LlamaContext
from pocketomni.backend.llama import LlamaModel
from pocketomni.backend.mtmd import MtmdContext
from pocketomni.errors import MediaError, ModelFileError, PocketOmniError


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict[str, Path]:
    return converted_tiny(tmp_path_factory, tiny_checkpoint)


@pytest.fixture(scope="module")
def thinker(files: dict[str, Path]):
    with LlamaModel(files["thinker"], n_threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def mtmd(files: dict[str, Path], thinker: LlamaModel):
    with MtmdContext(files["mmproj"], thinker, n_threads=1, image_min_tokens=4) as mt:
        yield mt


def _image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.05
    return (0.3 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def test_capabilities(mtmd: MtmdContext, thinker: LlamaModel) -> None:
    assert mtmd.supports_vision and mtmd.supports_audio
    assert mtmd.audio_sample_rate == 16000 and mtmd.uses_mrope
    assert mtmd.marker == "<__media__>"


def test_encode_image_grid_and_counts(mtmd: MtmdContext, thinker: LlamaModel) -> None:
    emb = mtmd.encode_image(_image(84, 56))
    assert emb.kind == "image" and emb.grid == (3, 2)  # 28-pixel patches after the 2x2 merge
    assert emb.embd.shape == (6, thinker.n_embd) and emb.embd.dtype == np.float32
    assert np.all(np.isfinite(emb.embd)) and emb.n_pos == 3
    assert mtmd.count_image_tokens(84, 56) == (6, (3, 2))
    big = mtmd.count_image_tokens(560, 280)
    assert big == (200, (20, 10)) and mtmd.encode_image(_image(560, 280)).embd.shape[0] == 200
    pos = emb.mrope_positions(10)
    np.testing.assert_array_equal(pos[:, 4], [10, 11, 11, 0])  # token 4 = row 1, col 1
    # the same image twice gives the same rows; a different image different ones
    np.testing.assert_array_equal(mtmd.encode_image(_image(84, 56)).embd, emb.embd)
    assert np.abs(mtmd.encode_image(_image(84, 56, seed=1)).embd - emb.embd).max() > 1e-3


def test_encode_audio_uses_mtmd_windows(mtmd: MtmdContext, thinker: LlamaModel) -> None:
    emb = mtmd.encode_audio(_audio(3.0))
    assert emb.kind == "audio" and emb.grid is None
    assert emb.embd.shape == (750, thinker.n_embd)  # stock mtmd: one 30 s window (design.md section 8)
    assert mtmd.count_audio_tokens(16000 * 3) == 750 and mtmd.count_audio_tokens(16000 * 45) == 1500
    assert emb.chunk_tokens == [750]


def test_own_placement_equals_stock_path(mtmd: MtmdContext, thinker: LlamaModel) -> None:
    img, clip = _image(84, 56, seed=2), _audio(1.0, seed=3)
    prompt = f"look {mtmd.marker} and listen {mtmd.marker} now"
    plan = mtmd.stock_plan(prompt, [img, clip])
    assert [k for k, _ in plan] == ["text", "image", "text", "audio", "text"]
    with LlamaContext(thinker, n_ctx=2048, n_batch=256) as stock:
        n_past = mtmd.eval_stock(stock, prompt, [img, clip])
        ref = stock.output_logits()
        assert stock.next_pos() == n_past
    with LlamaContext(thinker, n_ctx=2048, n_batch=256) as own:
        media = iter([mtmd.encode_image(img), mtmd.encode_audio(clip)])
        for kind, item in plan:
            if kind == "text":
                out = own.decode_tokens(item)
            else:
                emb = next(media)
                assert emb.n_tokens == item
                out = own.decode_embeddings(emb.embd, positions=emb.mrope_positions(own.next_pos()))
        assert own.next_pos() == n_past and own.n_tokens() == stock.n_tokens()
    np.testing.assert_allclose(out.last_logits, ref, rtol=0, atol=1e-5)


def test_bad_media_raise_media_error(mtmd: MtmdContext) -> None:
    bad_images = [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32),
                  np.zeros((0, 10, 3), np.uint8), np.zeros((20000, 1, 3), np.uint8)]
    for a in bad_images:
        with pytest.raises(MediaError):
            mtmd.encode_image(a)
    for a in [np.zeros(0, np.float32), np.zeros(1, np.float32), np.zeros((2, 100), np.float32),
              np.array([0.0, np.nan, 0.0], np.float32), np.zeros(100, np.int16)]:
        with pytest.raises(MediaError):
            mtmd.encode_audio(a)
    with pytest.raises(MediaError):
        mtmd.count_image_tokens(0, 10)
    assert mtmd.encode_image(_image(56, 56)).n_tokens == 4  # still works afterwards


def test_projector_file_errors(files: dict[str, Path], thinker: LlamaModel, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not a multimodal projector"):
        MtmdContext(files["thinker"], thinker)
    data = files["mmproj"].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        MtmdContext(tmp_path / "cut.gguf", thinker)
    with pytest.raises(ModelFileError):
        MtmdContext(tmp_path / "absent.gguf", thinker)
    wide = build_tiny_gguf(tmp_path / "wide.gguf", TinySpec(n_embd=128))
    with LlamaModel(wide, n_threads=1) as other, pytest.raises(ModelFileError, match="n_embd"):
        MtmdContext(files["mmproj"], other)
    with pytest.raises(ModelFileError, match="mmproj"):
        LlamaModel(files["mmproj"])


def test_close_order(files: dict[str, Path]) -> None:
    m = LlamaModel(files["thinker"], n_threads=1)
    mt = MtmdContext(files["mmproj"], m, n_threads=1)
    m.close()  # closes the projector too
    assert mt.closed
    with pytest.raises(PocketOmniError):
        mt.encode_image(_image(56, 56))
