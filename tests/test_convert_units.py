"""Unit checks of the converter's building blocks: safetensors reading, bf16, GGUF streaming, positions."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from safetensors.torch import save_file

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


U32 = 2.0**-24  # float32 unit roundoff: rounding to nearest errs by <= U32*|x|; one ulp(x) <= 2*U32*|x|


def position_table_bound(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Largest |ours - reference| each entry of the audio position table can have from float32 rounding.

    Reference (transformers' SinusoidsPositionEmbedding, torch float32):
        a_k = -inc * k;  inv_k = exp(a_k);  t = p * inv_k;  table = [sin(t), cos(t)]
    ours (sinusoid_positions): the same a_k (the same IEEE float32 multiply of the same operands, so the
    same bits), inv_k = float32(exp in float64), t in float32, sin/cos in float64 rounded to float32.
    - exp: torch's float32 exp (Sleef u10 on x86/ARM, libm for the tail) errs by <= 1 ulp <= 2u*inv_k,
      ours by <= 0.5 ulp <= u*inv_k, so |d inv_k| <= 3u*inv_k. CPUs differ here: AVX2 and AVX-512 Sleef
      round differently, which is why no single machine's gap can be the bound.
    - t = p*inv_k: each side rounds once (<= u*p*inv_k), so |d t| <= p*|d inv_k| + 2u*p*inv_k = 5u*p*inv_k.
    - sin/cos are 1-Lipschitz; torch's float32 sin/cos err by <= 1 ulp <= 2u (|value| <= 1), ours by
      <= 0.5 ulp <= u (float64 evaluation errors, ~1e-16, are far below these float32 terms).
    So |d table[p, k]| <= u*(5*p*inv_k + 3). Largest at p = length-1, inv_0 = 1: 5*1499*2**-24 = 4.5e-4,
    i.e. 3.7 ulps of float32 at 1499 (one ulp there is 2**-13 = 1.22e-4: the gap seen on Intel AVX-512).
    """
    half = channels // 2
    inv = np.exp(-np.log(max_timescale) / (half - 1) * np.arange(half))
    steps_t = 3 + 2  # in units of u*p*inv_k: exp (1 ulp torch + 0.5 ulp ours = 3u), the two products (2u)
    steps_sin = 2 + 1  # in units of u: torch's sin/cos (1 ulp = 2u) and ours (0.5 ulp = u)
    bound = U32 * (steps_t * np.arange(length)[:, None] * inv[None, :] + steps_sin)
    return np.concatenate([bound, bound], axis=1)


def test_audio_position_table_matches_the_reference() -> None:
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import SinusoidsPositionEmbedding

    length = 1500  # max_source_positions: the table's rows
    for channels in (32, 48, 1280):
        ref = SinusoidsPositionEmbedding(length, channels).positional_embedding.numpy()
        ours = sinusoid_positions(length, channels)
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        bound = position_table_bound(length, channels)
        assert bound.max() <= 5 * (length - 1) * U32 + 3 * U32  # <= 4.5e-4 overall, see the derivation
        err = np.abs(ours.astype(np.float64) - ref)
        worst = np.unravel_index(np.argmax(err - bound), err.shape)
        assert np.all(err <= bound), \
            f"{channels} channels: |ours - ref| {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"
        # The bound still tells a wrong table apart: positions off by one, or the timescale step of
        # log(max)/(C/2) instead of log(max)/(C/2 - 1), exceed it.
        assert not np.all(np.abs(ours[1:].astype(np.float64) - ref[:-1]) <= bound[1:])
        half = channels // 2
        step = np.float32(-np.log(10000.0) / half)
        inv = np.exp(step * np.arange(half, dtype=np.float32))
        t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
        wrong = np.concatenate([np.sin(t), np.cos(t)], axis=1)
        assert not np.all(np.abs(wrong.astype(np.float64) - ref) <= bound)
