"""Keeps quantized weights out of ggml's AMX buffer type, whose matmul faults (llama.cpp issue 20824).

A llama.cpp compiled for an Intel CPU with AMX (GGML_NATIVE on such a host, as a plain
`pip install llama-cpp-python` does) puts quantized weights in its AMX buffer type, and the first
quantized matmul segfaults in `ggml_backend_amx_mul_mat`. scripts/setup.sh builds without those
kernels; this guard protects builds that came from elsewhere.

When the loaded llama.cpp has the AMX buffer type and the CPU has AMX, models load with llama.cpp's
extra buffer types off, and the weights that the other repacked layout (CPU_REPACK: AVX2/AVX-512
kernels) takes are sent there by tensor buffer-type overrides, so only the AMX kernels are lost.
`POCKETOMNI_ALLOW_AMX=1` opts back in, for builds where upstream has fixed the kernel.

Weight layouts a model can load with (`LlamaModel(weight_layout=...)`):
    "default"  llama.cpp's choice among all its extra buffer types (AMX first where present)
    "repack"   extra buffer types off, CPU_REPACK by explicit overrides (what the guard picks)
    "plain"    extra buffer types off: every weight in the plain CPU buffer (no repacking)
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pocketomni.errors import OptionsError

WeightLayout = Literal["default", "repack", "plain"]
WEIGHT_LAYOUTS: tuple[WeightLayout, ...] = ("default", "repack", "plain")
ALLOW_AMX_ENV = "POCKETOMNI_ALLOW_AMX"
AMX_BUFFER = "AMX"
REPACK_BUFFER = "CPU_REPACK"

logger = logging.getLogger("pocketomni")


@dataclass(frozen=True)
class CpuFeatures:
    """What the CPU can do, as the OS reports it (/proc/cpuinfo flag names, lower case)."""

    model: str
    machine: str  # platform.machine(): x86_64, aarch64, arm64, ...
    flags: frozenset[str]

    @property
    def has_amx(self) -> bool:
        return "amx_int8" in self.flags or "amx_tile" in self.flags

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "i386")

    def summary(self) -> dict[str, bool]:
        """The features that decide which llama.cpp kernels run fast, by common name."""
        f = self.flags
        return {
            "AVX2": "avx2" in f,
            "AVX512": "avx512f" in f,
            "AVX512_VNNI": "avx512_vnni" in f,
            "AVX_VNNI": "avx_vnni" in f,
            "AMX": self.has_amx,
            "NEON": "asimd" in f or "neon" in f or self.machine in ("arm64", "aarch64"),
            "DOTPROD": "asimddp" in f or "dotprod" in f,
            "I8MM": "i8mm" in f,
        }


def parse_cpuinfo(text: str, machine: str) -> CpuFeatures:
    """CpuFeatures from the text of /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    model, flags = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if not model and key in ("model name", "hardware", "cpu model"):
            model = value.strip()
        elif not flags and key in ("flags", "features"):
            flags = value
    return CpuFeatures(model=model or machine, machine=machine, flags=frozenset(flags.lower().split()))


@functools.cache
def read_cpu_features() -> CpuFeatures:
    """This machine's CPU (Linux and Android read /proc/cpuinfo; elsewhere only the model name)."""
    machine = platform.machine()
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"), machine)
    except OSError:
        return CpuFeatures(model=platform.processor() or machine, machine=machine, flags=frozenset())


def ggml_library() -> ctypes.CDLL | None:
    """libggml as llama-cpp-python loaded it (same folder, so the same copy), or None if not found."""
    import llama_cpp.llama_cpp as L

    folder = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(L.__file__).parent / "lib")
    names = {"darwin": ["libggml.dylib"], "win32": ["ggml.dll"]}.get(sys.platform, ["libggml.so"])
    for name in names:
        if (folder / name).exists():
            try:
                return ctypes.CDLL(str(folder / name))
            except OSError:
                return None
    return None


@functools.cache
def _extra_buffer_pointers() -> tuple[tuple[str, int], ...]:
    """(name, ggml_backend_buffer_type_t) of the CPU device's extra buffer types, in llama.cpp's
    order of preference; () when they cannot be read."""
    lib = ggml_library()
    if lib is None:
        return ()
    vp = ctypes.c_void_p
    try:
        lib.ggml_backend_dev_by_type.argtypes, lib.ggml_backend_dev_by_type.restype = [ctypes.c_int], vp
        lib.ggml_backend_dev_backend_reg.argtypes, lib.ggml_backend_dev_backend_reg.restype = [vp], vp
        lib.ggml_backend_reg_get_proc_address.argtypes = [vp, ctypes.c_char_p]
        lib.ggml_backend_reg_get_proc_address.restype = vp
        lib.ggml_backend_buft_name.argtypes, lib.ggml_backend_buft_name.restype = [vp], ctypes.c_char_p
    except AttributeError:
        return ()
    cpu = lib.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not cpu:
        return ()
    reg = lib.ggml_backend_dev_backend_reg(cpu)
    fn_ptr = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not fn_ptr:
        return ()
    get_extra = ctypes.CFUNCTYPE(ctypes.POINTER(vp), vp)(fn_ptr)
    arr = get_extra(cpu)
    out: list[tuple[str, int]] = []
    i = 0
    while arr and arr[i]:
        out.append((lib.ggml_backend_buft_name(arr[i]).decode("utf-8", "replace"), int(arr[i])))
        i += 1
    return tuple(out)


def extra_buffer_types() -> tuple[str, ...]:
    """Names of llama.cpp's extra CPU buffer types in this process (e.g. ("AMX", "CPU_REPACK"))."""
    return tuple(name for name, _ in _extra_buffer_pointers())


def buffer_type_pointer(name: str) -> int | None:
    """The ggml_backend_buffer_type_t of the extra buffer type `name`, or None if absent."""
    return dict(_extra_buffer_pointers()).get(name)


def allow_amx_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """The opt-in: POCKETOMNI_ALLOW_AMX=1/true/yes/on; unset, empty, 0/false/no/off keep the guard."""
    value = environ.get(ALLOW_AMX_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise OptionsError(
        f"{ALLOW_AMX_ENV}={environ[ALLOW_AMX_ENV]!r} is not understood; set it to 1 to let llama.cpp use "
        "its AMX kernels (only for builds where llama.cpp issue 20824 is fixed) or unset it."
    )


@dataclass(frozen=True)
class GuardDecision:
    """How models load on this machine, and why."""

    layout: WeightLayout
    reason: str

    @property
    def avoids_amx(self) -> bool:
        return self.layout != "default"


def decide(cpu: CpuFeatures, buffer_types: Iterable[str], allow_amx: bool) -> GuardDecision:
    """The guard's rule, free of side effects so it can be tested for every combination."""
    types = tuple(buffer_types)
    if AMX_BUFFER not in types:
        return GuardDecision("default", "llama.cpp was built without its AMX kernels: nothing to avoid")
    if not cpu.has_amx:
        return GuardDecision("default", "the CPU has no AMX, so llama.cpp's AMX kernels never run")
    if allow_amx:
        return GuardDecision("default", f"AMX kernels allowed by {ALLOW_AMX_ENV}=1")
    if REPACK_BUFFER in types:
        return GuardDecision(
            "repack",
            "AMX CPU and a llama.cpp built with AMX kernels, which fault on quantized weights "
            "(llama.cpp issue 20824): weights go to CPU_REPACK (AVX-512) instead of AMX "
            f"(rebuild with scripts/setup.sh, or set {ALLOW_AMX_ENV}=1 if your llama.cpp has the fix)",
        )
    return GuardDecision(
        "plain",
        "AMX CPU and a llama.cpp built with AMX kernels, which fault on quantized weights "
        "(llama.cpp issue 20824), and no CPU_REPACK buffer type: weights stay unrepacked "
        f"(rebuild with scripts/setup.sh, or set {ALLOW_AMX_ENV}=1 if your llama.cpp has the fix)",
    )


@functools.cache
def current_decision() -> GuardDecision:
    """The decision for this process (computed once; logged once when it changes how models load)."""
    decision = decide(read_cpu_features(), extra_buffer_types(), allow_amx_from_env())
    if decision.avoids_amx:
        logger.warning("pocketomni: %s", decision.reason)
    return decision


# Weights that llama.cpp multiplies (MUL_MAT) and never reads by row: the only ones a repacked
# buffer may hold (token_embd is read by GET_ROWS and must stay in a plain buffer).
_MATMUL_WEIGHT = re.compile(r"^(blk\.\d+\.(attn_(q|k|v|qkv|output)|ffn_(gate|up|down))\.weight|output\.weight)$")
# What llama.cpp's x86 CPU_REPACK takes (ggml_repack_get_optimal_repack_type in ggml-cpu/repack.cpp
# of the llama.cpp that llama-cpp-python 0.3.36 vendors): these types with rows % 8 == 0, given AVX2;
# Q2_K needs AVX-512. A tensor sent there that it cannot repack would crash, so this stays exact.
_REPACK_TYPES_AVX2 = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})
_REPACK_TYPES_AVX512 = frozenset({"Q2_K"})


def repack_weights(tensors: Iterable[tuple[str, str, tuple[int, ...]]], cpu: CpuFeatures) -> list[str]:
    """Names of the weights CPU_REPACK takes on this (x86) CPU, from (name, ggml type name, numpy
    shape) records. Empty on other architectures: the guard only acts on AMX, which is x86."""
    if not cpu.is_x86 or "avx2" not in cpu.flags:
        return []
    types = _REPACK_TYPES_AVX2 | (_REPACK_TYPES_AVX512 if "avx512f" in cpu.flags else frozenset())
    return [
        name for name, type_name, shape in tensors
        if _MATMUL_WEIGHT.match(name) and type_name in types and len(shape) == 2 and shape[0] % 8 == 0
    ]


def override_pattern(names: Iterable[str]) -> str | None:
    """One anchored regex matching exactly `names` (llama.cpp compiles each override's pattern once
    per tensor, so one pattern beats hundreds), grouped by the tensor's role: blk.(0|1|2).ffn_up.weight."""
    by_role: dict[str, list[str]] = {}
    others: list[str] = []
    for name in names:
        m = re.match(r"^blk\.(\d+)\.(.+)$", name)
        if m:
            by_role.setdefault(m.group(2), []).append(m.group(1))
        else:
            others.append(re.escape(name))
    parts = [rf"blk\.({'|'.join(layers)})\.{re.escape(role)}" for role, layers in sorted(by_role.items())]
    parts += others
    return f"^({'|'.join(parts)})$" if parts else None
