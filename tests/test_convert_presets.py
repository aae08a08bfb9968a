"""`--quant` presets and the pure type (issue 20): what each writes for the thinker and the talker."""

from __future__ import annotations

import gguf
import pytest
from gguf import GGMLQuantizationType as QT

from pocketomni.convert.pipeline import QUANT_PRESETS, resolve_quants
from pocketomni.errors import ConversionError


def _matrix_types(path) -> dict[str, QT]:
    return {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors if len(t.shape) >= 2}


def test_resolve_quants() -> None:
    assert resolve_quants("fast", None) == QUANT_PRESETS["fast"] == ("q4_0", "q4_0")
    assert resolve_quants("FAITHFUL", None) == ("q8_0", "q8_0")
    assert resolve_quants("fast", "q8_0") == ("q4_0", "q8_0")  # --talker-quant wins over the preset
    assert resolve_quants("q4_k_m", None) == ("q4_k_m", "q4_k_m")  # a type: the talker follows it
    with pytest.raises(ConversionError, match="unknown --quant 'q3_k'.*fast, faithful"):
        resolve_quants("q3_k", None)
    with pytest.raises(ConversionError, match="unknown --talker-quant 'fast'"):
        resolve_quants("q8_0", "fast")


def test_fast_preset_writes_q4_0_thinker_and_talker(converted_tiny) -> None:
    out = converted_tiny("base", "fast")
    names = sorted(p.name for p in out.iterdir())
    assert "thinker-q4_0.gguf" in names and "talker-q4_0.gguf" in names
    for f in ("thinker-q4_0.gguf", "talker-q4_0.gguf"):
        types = _matrix_types(out / f)
        assert sum(t == QT.Q4_0 for t in types.values()) >= len(types) - 2  # the mix: head (and table) wider
        assert types["output.weight"] != QT.Q4_0


def test_pure_type_stores_every_matrix_in_q4_0(converted_tiny) -> None:
    out = converted_tiny("base", "q4_0_pure")
    for f in ("thinker-q4_0_pure.gguf", "talker-q4_0_pure.gguf"):
        types = _matrix_types(out / f)
        assert set(types.values()) == {QT.Q4_0}, types
        assert "output.weight" in types and "token_embd.weight" in types
    from pocketomni.backend import LlamaModel

    with LlamaModel(out / "talker-q4_0_pure.gguf") as talker:
        assert talker.n_vocab == 8448
