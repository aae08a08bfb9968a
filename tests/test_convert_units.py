"""Unit checks of the converter's building blocks: safetensors reading, bf16, GGUF streaming, positions."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from pocketomni.convert.mmproj import sinusoid_positions
from pocketomni.convert.safetensors import MappedFiles, iter_rows_f32, read_f32, read_header
from pocketomni.convert.writer import (
    FastGGUFWriter,
    GGUFPlan,
    TensorSpec,
    f32_to_bf16_bits,
    one_block,
    write_gguf,
)
from safetensors.torch import save_file


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.bf16": (torch.randn(300, 64, generator=g) * 3).to(torch.bfloat16),
        "b.f16": torch.randn(7, 5, 3, generator=g).to(torch.float16),
        "c.f32": torch.randn(33, generator=g),
        "d.bf16.special": torch.tensor([0.0, -0.0, 1e-40, -3e38, float("inf"), 1.5], dtype=torch.bfloat16),
    }


def test_reader_matches_safetensors_and_torch(tmp_path: Path) -> None:
    ts = _tensors()
    path = tmp_path / "x.safetensors"
    save_file(ts, str(path), metadata={"format": "pt"})
    infos = read_header(path)
    assert set(infos) == set(ts)
    with MappedFiles() as files:
        for name, t in ts.items():
            assert infos[name].shape == tuple(t.shape) and infos[name].dtype == {
                torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[t.dtype]
            want = t.float().numpy()
            np.testing.assert_array_equal(read_f32(files, infos[name]), want)  # bit-exact upcast
            blocks = list(iter_rows_f32(files, infos[name], block_bytes=1024))
            np.testing.assert_array_equal(np.concatenate(blocks) if want.ndim > 1 else blocks[0], want)
        assert len(list(iter_rows_f32(files, infos["a.bf16"], block_bytes=1024))) == 75  # 4 rows per block


def test_truncated_shard_is_refused(tmp_path: Path) -> None:
    from pocketomni.errors import ConversionError

    path = tmp_path / "x.safetensors"
    save_file(_tensors(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ConversionError, match="truncated"):
        read_header(path)


def test_bf16_encoding_round_trips_and_rounds_to_nearest_even() -> None:
    raw = np.arange(0, 1 << 16, 7, dtype=np.uint32).astype(np.uint16)
    raw = raw[((raw >> 7) & 0xFF) != 0xFF]  # drop inf/nan patterns
    f = (raw.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(f32_to_bf16_bits(f), raw)
    x = np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20], dtype=np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(f32_to_bf16_bits(x), want)


def test_streamed_file_equals_gguf_writer_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "w.f32": (rng.standard_normal((40, 64)).astype(np.float32), QT.F32),
        "w.f16": (rng.standard_normal((3, 5, 64)).astype(np.float32), QT.F16),
        "w.q8": (rng.standard_normal((12, 96)).astype(np.float32), QT.Q8_0),
        "w.bf16": (rng.standard_normal((9, 32)).astype(np.float32), QT.BF16),
        "v.odd": (rng.standard_normal(13).astype(np.float32), QT.F32),
    }
    tokens = [f"tok{i}" for i in range(200)] + ["ĠĠ", "日本", "😀"]

    def kv(w: gguf.GGUFWriter) -> None:
        w.add_name("unit")
        w.add_token_list(tokens)
        w.add_token_types([1] * 200 + [3, 4, 1])
        w.add_array("x.floats", [0.5, 1.5])

    def rows(a: np.ndarray):
        return lambda: iter(np.array_split(a, 3) if a.ndim > 1 else [a])

    plan = GGUFPlan("llama", kv, [TensorSpec(n, a.shape, q, rows(a)) for n, (a, q) in arrays.items()])
    write_gguf(tmp_path / "streamed.gguf", plan)

    ref = gguf.GGUFWriter(tmp_path / "ref.gguf", "llama")
    kv(ref)
    for n, (a, q) in arrays.items():
        if q == QT.F32:
            ref.add_tensor(n, a)
        elif q == QT.F16:
            ref.add_tensor(n, a.astype(np.float16))
        elif q == QT.BF16:
            ref.add_tensor(n, f32_to_bf16_bits(a), raw_shape=a.shape, raw_dtype=QT.BF16)
        else:
            ref.add_tensor(n, gguf.quants.quantize(a, q), raw_dtype=q)
    ref.write_header_to_file()
    ref.write_kv_data_to_file()
    ref.write_tensors_to_file()
    ref.close()
    assert (tmp_path / "streamed.gguf").read_bytes() == (tmp_path / "ref.gguf").read_bytes()
    assert isinstance(FastGGUFWriter(None, "llama"), gguf.GGUFWriter)


def test_write_gguf_rejects_a_source_of_the_wrong_size(tmp_path: Path) -> None:
    short = one_block(lambda: np.zeros((3, 4), np.float32))
    plan = GGUFPlan("llama", lambda w: None, [TensorSpec("t", (4, 4), QT.F32, short)])
    with pytest.raises(RuntimeError, match="expected"):
        write_gguf(tmp_path / "x.gguf", plan)


def test_audio_position_table_matches_the_reference() -> None:
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import SinusoidsPositionEmbedding

    for channels in (32, 48, 1280):
        ref = SinusoidsPositionEmbedding(1500, channels).positional_embedding.numpy()
        ours = sinusoid_positions(1500, channels)
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        # torch's float32 exp is not correctly rounded; 1 ulp of a timescale times position 1499
        # moves sin/cos by up to ~3e-5 (a wrong formula would be off by O(1)).
        np.testing.assert_allclose(ours, ref, rtol=0, atol=5e-5)
