"""LlamaModel: a loaded GGUF text model (weights + vocabulary) behind a small typed API.

Only this package touches llama-cpp-python's ctypes layer. Every argument is checked in Python
before it reaches C, since llama.cpp aborts the process on some bad inputs.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp.llama_cpp as L
import numpy as np

from pocketomni.backend import _log, lifetime
from pocketomni.backend.cpu_guard import (
    REPACK_BUFFER,
    WEIGHT_LAYOUTS,
    WeightLayout,
    buffer_type_pointer,
    current_decision,
    override_pattern,
    read_cpu_features,
    repack_weights,
)
from pocketomni.backend.mapped_file import PageDropper, drop_mapped_pages
from pocketomni.errors import ModelFileError, OptionsError, PocketOmniError
from pocketomni.gguf_file import EmbeddingRows, GGUFFile

if TYPE_CHECKING:
    from typing_extensions import Self

_backend_lock = threading.Lock()
_backend_ready = False


def ensure_backend() -> None:
    """Initialise llama.cpp once per process and route its log to Python logging."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            _log.install()
            L.llama_backend_init()
            _backend_ready = True


def default_threads() -> int:
    """Threads to use when the caller does not say: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def gpu_available() -> bool:
    """Was this llama.cpp built with a GPU backend (Metal on macOS, CUDA, Vulkan, ...) that has a device?"""
    ensure_backend()
    return bool(L.llama_supports_gpu_offload())


def gpu_layers(use_gpu: bool | None) -> int:
    """llama.cpp's n_gpu_layers for `use_gpu`: None uses a GPU when there is one; False never."""
    if use_gpu is False or not gpu_available():
        return 0
    return -1  # every layer


def available_memory() -> int | None:
    """Bytes of memory the system can still give (MemAvailable on Linux/Android, physical memory
    elsewhere), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def should_mmap(path: Path, n_gpu_layers: int, platform: str | None = None) -> bool:
    """Map the file, or read it into memory? On the CPU llama.cpp repacks most quantized weights into a
    buffer of its own (faster matmuls). Mapped, on Linux and Android the file's pages for those weights
    are dropped as it loads (backend/mapped_file.py); what stays in use from the file (token table rows,
    output head, weights not repacked) is clean file-backed memory the kernel can reclaim under pressure
    instead of killing the process, and token-table rows never used never load. Read, all of it is
    anonymous memory. Spoken turn on x86 (benchmarks/results/memory.md, 2026-12-03): mapped peaks at
    3150 / 6196 MB (3B / 7B) against 3276 / 6457 MB read, with 1210 / 2299 MB reclaimable against
    590 / 593 MB, loads faster and decodes as fast. Where pages cannot be dropped (macOS, Windows) the
    file's pages would stay beside the repacked copy, so there: read, unless the weights go to a GPU
    (zero-copy buffers) or the file would take more than half the memory still available."""
    if n_gpu_layers != 0:
        return True
    from pocketomni.audio.backend import detect_platform

    if (platform or detect_platform()) in ("linux", "android"):
        return True
    avail = available_memory()
    return avail is None or path.stat().st_size > avail // 2


class _BuftOverride(ctypes.Structure):
    """llama.cpp's struct llama_model_tensor_buft_override (llama-cpp-python leaves it untyped)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class LlamaModel:
    """A GGUF model loaded by llama.cpp. Use as a context manager or call `close()`.

    `lock` is the model's re-entrant lock: everything that runs the model (all its contexts)
    takes it, so several chats on one model take turns. `n_gpu_layers` None puts every layer on the
    GPU when llama.cpp has one (`gpu_layers`); `use_mmap` None lets `should_mmap` choose.
    `weight_layout` None follows the CPU guard (`cpu_guard.current_decision`, which keeps weights out
    of llama.cpp's faulty AMX kernels); "default", "repack" or "plain" force one (benchmarks, tests).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_threads: int | None = None,
        use_mmap: bool | None = None,
        n_gpu_layers: int | None = None,
        vocab_only: bool = False,
        expect_arch: str | Sequence[str] | None = None,
        weight_layout: WeightLayout | None = None,
    ) -> None:
        ensure_backend()
        self.path = Path(path)
        self.gguf = GGUFFile.open(self.path)  # raises ModelFileError before llama.cpp sees a bad file
        arch = self.gguf.arch
        if not arch:
            raise ModelFileError(f"{self.path} has no general.architecture key; it is not a llama.cpp model file.")
        if arch == "clip":
            raise ModelFileError(
                f"{self.path} is a multimodal projector (mmproj), not the thinker model; pass the model folder "
                "(or the thinker .gguf) and give this file as mmproj=..."
            )
        if expect_arch is not None:
            allowed = (expect_arch,) if isinstance(expect_arch, str) else tuple(expect_arch)
            if arch not in allowed:
                raise ModelFileError(f"{self.path} has architecture {arch!r}, expected one of {allowed}.")
        if "token_embd.weight" not in self.gguf.tensors and not vocab_only:
            raise ModelFileError(f"{self.path} has no token_embd.weight tensor; it is not a text model.")
        self.gguf.check_text_hparams()
        if n_threads is not None and n_threads < 1:
            raise ValueError("n_threads must be >= 1")
        self.n_threads = n_threads or default_threads()
        self.lock = lifetime.ModelLock()
        self._contexts: weakref.WeakSet[Any] = weakref.WeakSet()

        params = L.llama_model_default_params()
        if n_gpu_layers is None:
            n_gpu_layers = gpu_layers(None)
        params.n_gpu_layers = int(n_gpu_layers)
        if use_mmap is None:
            use_mmap = should_mmap(self.path, int(n_gpu_layers))
        self.use_mmap = bool(use_mmap)
        params.load_mode = L.LLAMA_LOAD_MODE_MMAP if use_mmap else L.LLAMA_LOAD_MODE_NONE
        params.vocab_only = bool(vocab_only)
        self.weight_layout = self._apply_weight_layout(params, weight_layout)
        dropper = None
        if use_mmap and params.n_gpu_layers == 0 and self.weight_layout != "plain":
            # the CPU's repacked copy replaces most mapped weights: their file pages leave memory as it loads
            dropper = PageDropper(self.path)
            params.progress_callback = dropper.callback
        mark = _log.mark()
        ptr = L.llama_model_load_from_file(str(self.path).encode("utf-8"), params)
        if dropper is not None:
            drop_mapped_pages(self.path)
        if not ptr:
            raise ModelFileError(
                f"llama.cpp could not load {self.path}: {_log.recent_errors(mark)}. "
                "The file may be corrupt, truncated, or of an architecture this runtime does not support."
            )
        self._ptr: Any = ptr
        self._finalizer = weakref.finalize(self, L.llama_model_free, ptr)
        self._finalizer.atexit = False  # freed by lifetime's exit hook, not under a running decode
        lifetime.track(self)
        self._vocab = L.llama_model_get_vocab(ptr)
        self.arch = arch
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.n_embd = int(L.llama_model_n_embd(ptr))
        self.n_embd_inp = int(L.llama_model_n_embd_inp(ptr))
        self.n_layer = int(L.llama_model_n_layer(ptr))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(ptr))
        rope = int(L.llama_model_rope_type(ptr))
        self.uses_mrope = rope in (L.LLAMA_ROPE_TYPE_MROPE, L.LLAMA_ROPE_TYPE_IMROPE)
        self.n_pos_per_embd = 4 if self.uses_mrope else 1
        self.has_vocab = int(L.llama_vocab_type(self._vocab)) != L.LLAMA_VOCAB_TYPE_NONE
        self._embd_rows: EmbeddingRows | None = None
        self._identity: str | None = None

    def _apply_weight_layout(self, params: Any, layout: WeightLayout | None) -> WeightLayout:
        """Set the model params' extra buffer types and overrides for `layout` (see cpu_guard)."""
        if layout is None:
            layout = current_decision().layout
        if layout not in WEIGHT_LAYOUTS:
            raise OptionsError(f"weight_layout must be one of {WEIGHT_LAYOUTS} or None, not {layout!r}")
        params.use_extra_bufts = layout == "default"
        self._buft_overrides: Any = None
        if layout == "repack":
            records = ((t.name, t.ggml_type.name, t.shape) for t in self.gguf.tensors.values())
            pattern = override_pattern(repack_weights(records, read_cpu_features()))
            buft = buffer_type_pointer(REPACK_BUFFER)
            if pattern is not None and buft is not None:
                # NULL-terminated llama_model_tensor_buft_override[]; kept alive with the model.
                self._buft_overrides = (_BuftOverride * 2)(_BuftOverride(pattern.encode(), buft), _BuftOverride())
                params.tensor_buft_overrides = ctypes.addressof(self._buft_overrides)
        return layout

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        return self._ptr is None

    @property
    def ptr(self) -> Any:
        """The raw llama_model pointer (backend-internal)."""
        if self._ptr is None:
            raise PocketOmniError(f"model {self.path.name} is closed; load it again")
        return self._ptr

    def _register(self, child: Any) -> None:
        self._contexts.add(child)

    def _check_open(self) -> None:
        """Raise PocketOmniError if this object has been closed."""
        _ = self.ptr

    def close(self) -> None:
        """Free the model and every context created from it (idempotent)."""
        with self.lock:
            for child in list(self._contexts):
                child.close()
            if self._embd_rows is not None:
                self._embd_rows.close()
                self._embd_rows = None
            if self._ptr is not None:
                self._finalizer()
                self._ptr = None

    def close_at_exit(self, deadline: float) -> None:
        """Process exit (lifetime's hook): close once no thread runs native code on this model (its lock
        is then kept, parking late callers); if one still does at `deadline`, free nothing."""
        if self.lock.acquire_for_exit(deadline):
            self.close()
            return
        for child in list(self._contexts):
            child.keep_at_exit()
        self._finalizer.detach()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ metadata

    @property
    def metadata(self) -> dict[str, Any]:
        """GGUF metadata (long arrays such as the vocabulary appear as LongArray placeholders)."""
        return self.gguf.metadata

    @property
    def identity(self) -> str:
        """Id of the exact model file (GGUFFile.identity), computed once."""
        if self._identity is None:
            self._identity = self.gguf.identity()
        return self._identity

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template stored in the file, if any."""
        raw = L.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8") if raw else None

    def _special(self, fn: Any) -> int | None:
        self._check_open()
        tok = int(fn(self._vocab))
        return tok if 0 <= tok < self.n_vocab else None

    @property
    def bos_id(self) -> int | None:
        return self._special(L.llama_vocab_bos)

    @property
    def eos_id(self) -> int | None:
        return self._special(L.llama_vocab_eos)

    @property
    def eot_id(self) -> int | None:
        return self._special(L.llama_vocab_eot)

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (eos, eot, <|im_end|>, <|endoftext|> ...)."""
        self._check_token(token)
        return bool(L.llama_vocab_is_eog(self._vocab, int(token)))

    def is_control(self, token: int) -> bool:
        """True for control tokens (<|im_start|>, <|IMAGE|> ...): ids plain-text tokenization never yields."""
        self._check_open()
        self._check_token(token)
        return bool(int(L.llama_vocab_get_attr(self._vocab, int(token))) & L.LLAMA_TOKEN_ATTR_CONTROL)

    # ------------------------------------------------------------------ text

    def _check_token(self, token: int) -> None:
        if not isinstance(token, (int, np.integer)) or not 0 <= int(token) < self.n_vocab:
            raise ValueError(f"token id {token!r} is outside the vocabulary [0, {self.n_vocab})")

    def _need_vocab(self) -> None:
        self._check_open()
        if not self.has_vocab:
            raise PocketOmniError(f"{self.path.name} has no tokenizer (it is fed embeddings only)")

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Text to token ids. `parse_special` turns `<|im_start|>`-style strings into their special ids."""
        self._need_vocab()
        data = text.encode("utf-8")
        if len(data) >= 2**31 - 1:
            raise ValueError("text is too long to tokenize")
        cap = len(data) + 8
        for _ in range(2):
            buf = (L.llama_token * cap)()
            n = int(L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special))
            if n >= 0:
                return list(buf[:n])
            if n == -(2**31):
                raise ValueError("tokenization overflow")
            cap = -n
        raise PocketOmniError("llama_tokenize kept asking for a larger buffer")

    def token_to_piece(self, token: int, *, special: bool = False) -> bytes:
        """Raw bytes of one token (may be part of a multibyte UTF-8 character).
        With `special=False`, control tokens render as b''."""
        self._need_vocab()
        self._check_token(token)
        cap = 64
        for _ in range(3):
            buf = ctypes.create_string_buffer(cap)
            n = int(L.llama_token_to_piece(self._vocab, int(token), buf, cap, 0, special))
            if n >= 0:
                return buf.raw[:n]
            cap = -n
        raise PocketOmniError("llama_token_to_piece kept asking for a larger buffer")

    def detokenize(self, tokens: Iterable[int], *, special: bool = False) -> str:
        """Token ids to text; invalid UTF-8 (a cut multibyte character) becomes U+FFFD."""
        self._need_vocab()
        ids = [int(t) for t in tokens]
        for t in ids:
            self._check_token(t)
        if not ids:
            return ""
        arr = (L.llama_token * len(ids))(*ids)
        cap = 16 * len(ids) + 16
        for _ in range(3):
            buf = ctypes.create_string_buffer(cap)
            n = int(L.llama_detokenize(self._vocab, arr, len(ids), buf, cap, False, special))
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            cap = -n
        raise PocketOmniError("llama_detokenize kept asking for a larger buffer")

    def token_id(self, text: str) -> int | None:
        """The id of a string that is exactly one token (e.g. '<|im_end|>'), else None."""
        ids = self.tokenize(text, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    def text_stream(self, *, special: bool = False) -> TokenTextStream:
        """An incremental token -> text decoder for streaming output."""
        return TokenTextStream(self, special=special)

    # ------------------------------------------------------------------ embeddings

    def embed_tokens(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of the input embedding table (dequantized to float32), shape (n, n_embd_inp)."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise ValueError(f"token ids must lie in [0, {self.n_vocab})")
        with self.lock:
            if self._embd_rows is None:
                self._check_open()
                self._embd_rows = EmbeddingRows(self.gguf, "token_embd.weight")
                if self._embd_rows.n_cols != self.n_embd_inp:
                    raise ModelFileError(
                        f"{self.path}: token_embd has {self._embd_rows.n_cols} columns, model input is {self.n_embd_inp}"
                    )
            return self._embd_rows.rows(ids)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.n_layer} layers, n_embd {self.n_embd}, vocab {self.n_vocab}"
        return f"LlamaModel({self.path.name!r}, arch={self.arch!r}, {state})"


class TokenTextStream:
    """Turns a stream of token ids into text deltas, holding back incomplete UTF-8 sequences."""

    def __init__(self, model: LlamaModel, *, special: bool = False) -> None:
        self._model = model
        self._special = special
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token: int) -> str:
        """Feed one token; returns the newly completed text (possibly '')."""
        return self._dec.decode(self._model.token_to_piece(token, special=self._special))

    def push_bytes(self, piece: bytes) -> str:
        """Feed raw bytes (e.g. a piece obtained elsewhere)."""
        return self._dec.decode(piece)

    def flush(self) -> str:
        """End of stream: returns any held-back bytes (an incomplete character becomes U+FFFD)."""
        return self._dec.decode(b"", final=True)

    @property
    def pending(self) -> bool:
        """True while an incomplete multibyte character is held back."""
        return bool(self._dec.getstate()[0])
