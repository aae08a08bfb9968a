"""The CPU guard that keeps quantized weights out of llama.cpp's AMX kernels (llama.cpp issue 20824).

The decision is tested over every CPU/build/opt-in combination without an AMX CPU; the "repack"
layout it picks is tested against llama.cpp itself on this CPU: it must put exactly the weights that
llama.cpp's own default choice puts in CPU_REPACK there, and decode bit-identically.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from test_backend_tinymodel import TinySpec, build_tiny_gguf, quantize_gguf

from pocketomni.backend import cpu_guard
from pocketomni.backend.context import LlamaContext
from pocketomni.backend.cpu_guard import CpuFeatures, decide, override_pattern, parse_cpuinfo, repack_weights
from pocketomni.backend.llama import LlamaModel
from pocketomni.errors import OptionsError

INTEL_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
AMD_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm
"""
AMX_CPU = parse_cpuinfo(INTEL_AMX, "x86_64")
AMD_CPU = parse_cpuinfo(AMD_EPYC, "x86_64")
ARM_CPU = parse_cpuinfo(ARM, "aarch64")


def test_cpuinfo_parsing() -> None:
    assert AMX_CPU.model.startswith("Intel(R) Xeon(R) Platinum") and AMX_CPU.has_amx
    assert AMX_CPU.summary() == {"AVX2": True, "AVX512": True, "AVX512_VNNI": True, "AVX_VNNI": False,
                                 "AMX": True, "NEON": False, "DOTPROD": False, "I8MM": False}
    assert AMD_CPU.model == "AMD EPYC 9B14" and not AMD_CPU.has_amx and AMD_CPU.summary()["AVX512"]
    assert ARM_CPU.model == "aarch64" and not ARM_CPU.is_x86
    assert {k for k, v in ARM_CPU.summary().items() if v} == {"NEON", "DOTPROD", "I8MM"}


@pytest.mark.parametrize("cpu", [AMX_CPU, AMD_CPU, ARM_CPU], ids=["amx", "amd", "arm"])
@pytest.mark.parametrize("bufts", [(), ("CPU_REPACK",), ("AMX", "CPU_REPACK"), ("AMX",)],
                         ids=["none", "repack", "amx+repack", "amx"])
@pytest.mark.parametrize("allow", [False, True], ids=["guarded", "opt-in"])
def test_decision_over_every_combination(cpu: CpuFeatures, bufts: tuple[str, ...], allow: bool) -> None:
    d = decide(cpu, bufts, allow)
    must_avoid = cpu.has_amx and "AMX" in bufts and not allow
    assert d.avoids_amx == must_avoid
    if must_avoid:
        # Keep the other repacked layout when there is one; never a layout that names AMX.
        assert d.layout == ("repack" if "CPU_REPACK" in bufts else "plain")
        assert "20824" in d.reason and "scripts/setup.sh" in d.reason and "POCKETOMNI_ALLOW_AMX=1" in d.reason
    else:
        assert d.layout == "default"


@pytest.mark.parametrize("value,expected", [("", False), ("0", False), ("off", False), ("1", True),
                                            ("TRUE", True), (" yes ", True)])
def test_opt_in_from_environment(value: str, expected: bool) -> None:
    assert cpu_guard.allow_amx_from_env({cpu_guard.ALLOW_AMX_ENV: value}) is expected
    assert cpu_guard.allow_amx_from_env({}) is False


def test_unclear_opt_in_is_a_typed_error() -> None:
    with pytest.raises(OptionsError, match="POCKETOMNI_ALLOW_AMX='maybe'.*set it to 1"):
        cpu_guard.allow_amx_from_env({cpu_guard.ALLOW_AMX_ENV: "maybe"})


def test_repack_rule_mirrors_llama_cpp_on_x86() -> None:
    tensors = [
        ("token_embd.weight", "Q4_0", (1024, 256)),      # read by rows: never repacked
        ("blk.0.attn_q.weight", "Q4_0", (256, 256)),
        ("blk.0.attn_k.weight", "Q4_0", (12, 256)),      # rows not a multiple of 8
        ("blk.0.ffn_down.weight", "Q6_K", (256, 1024)),  # no x86 repack for Q6_K
        ("blk.1.ffn_up.weight", "Q4_K", (1024, 256)),
        ("blk.1.attn_norm.weight", "F32", (256,)),
        ("blk.2.attn_v.weight", "Q2_K", (64, 256)),      # Q2_K: AVX-512 only
        ("output.weight", "IQ4_NL", (1024, 256)),
    ]
    assert repack_weights(tensors, AMD_CPU) == [
        "blk.0.attn_q.weight", "blk.1.ffn_up.weight", "blk.2.attn_v.weight", "output.weight"]
    avx2_only = CpuFeatures("x", "x86_64", AMD_CPU.flags - {"avx512f"})
    assert "blk.2.attn_v.weight" not in repack_weights(tensors, avx2_only)
    assert repack_weights(tensors, CpuFeatures("x", "x86_64", frozenset({"sse2"}))) == []
    assert repack_weights(tensors, ARM_CPU) == []


def test_override_pattern_matches_exactly_the_names() -> None:
    names = ["blk.1.attn_q.weight", "blk.10.attn_q.weight", "blk.2.ffn_up.weight", "output.weight"]
    rx = re.compile(override_pattern(names) or "")
    assert all(rx.search(n) for n in names)
    for other in ["blk.0.attn_q.weight", "blk.11.attn_q.weight", "blk.1.attn_qkv.weight",
                  "blk.1.ffn_up.weight", "token_embd.weight", "output_norm.weight", "xblk.1.attn_q.weight"]:
        assert not rx.search(other), other
    assert override_pattern([]) is None


def test_this_machine_is_reported_as_it_is() -> None:
    cpu = cpu_guard.read_cpu_features()
    text = Path("/proc/cpuinfo").read_text()
    assert cpu.model and cpu.model in text
    d = cpu_guard.current_decision()
    assert d == decide(cpu, cpu_guard.extra_buffer_types(), cpu_guard.allow_amx_from_env())
    # scripts/setup.sh builds llama.cpp without its AMX kernels, so a guarded layout here means
    # llama-cpp-python came from elsewhere; the tests' own install must be the safe build.
    assert "AMX" not in cpu_guard.extra_buffer_types()


# ----------------------------------------------------------------- against llama.cpp on this CPU

def _buffer_sizes(caplog: pytest.LogCaptureFixture) -> dict[str, float]:
    """llama.cpp's 'NAME model buffer size = X MiB' lines from the last load."""
    out: dict[str, float] = {}
    for rec in caplog.records:
        m = re.search(r"(\S+) model buffer size =\s*([\d.]+) MiB", rec.getMessage())
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def _load_and_decode(path: Path, layout: str, caplog: pytest.LogCaptureFixture):
    caplog.clear()
    ids = np.random.default_rng(5).integers(0, TinySpec().n_vocab, 24).tolist()
    with caplog.at_level(logging.INFO, logger="pocketomni.llama"):
        with LlamaModel(path, n_threads=1, weight_layout=layout) as m, LlamaContext(m, n_ctx=64, n_batch=32) as c:
            assert m.weight_layout == layout
            logits = c.decode_tokens(ids, logits="all").logits.copy()
    return _buffer_sizes(caplog), logits


@pytest.mark.parametrize("ftype,name", [(2, "q4_0"), (15, "q4_k_m")])
def test_repack_layout_equals_llama_cpps_default_choice(tmp_path: Path, caplog, ftype: int, name: str) -> None:
    if "CPU_REPACK" not in cpu_guard.extra_buffer_types() or "avx2" not in cpu_guard.read_cpu_features().flags:
        pytest.fail("this x86 CPU/llama.cpp should offer CPU_REPACK (AVX2); the guard's layout is untested")
    spec = TinySpec(n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_layer=2)
    q = quantize_gguf(build_tiny_gguf(tmp_path / "f32.gguf", spec), tmp_path / f"{name}.gguf", ftype=ftype)
    default_sizes, default_logits = _load_and_decode(q, "default", caplog)
    repack_sizes, repack_logits = _load_and_decode(q, "repack", caplog)
    plain_sizes, plain_logits = _load_and_decode(q, "plain", caplog)
    assert default_sizes.get("CPU_REPACK", 0) > 0, default_sizes
    # The overrides reproduce llama.cpp's own placement byte for byte, hence the same kernels...
    assert repack_sizes == default_sizes
    np.testing.assert_array_equal(repack_logits, default_logits)
    # ...while with extra buffer types off nothing is repacked (other kernels: for q4_K the repacked
    # GEMM quantizes activations in its own interleaved layout, so the two paths round differently and
    # no tight bound between them follows from the arithmetic; only that it runs is checked).
    assert "CPU_REPACK" not in plain_sizes
    assert np.isfinite(plain_logits).all()


def test_unknown_layout_is_rejected(tmp_path: Path) -> None:
    path = build_tiny_gguf(tmp_path / "f32.gguf", TinySpec())
    with pytest.raises(OptionsError, match="weight_layout must be one of"):
        LlamaModel(path, weight_layout="amx")  # type: ignore[arg-type]
