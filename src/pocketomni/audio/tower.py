"""Qwen2.5-Omni audio encoder (the thinker's audio tower) in numpy, run exactly as the reference runs it.

The log-mel of a whole clip is cut into 2 s windows (2 * n_window = 200 mel frames; the last window may
be shorter). Each window goes through conv1 (k3, pad 1) + GELU and conv2 (k3, stride 2, pad 1) + GELU
on its own, gets sinusoidal positions restarting at 0, and attends only within itself in every layer.
The rows of the clip are then average-pooled in pairs, normed (ln_post) and projected, giving
((L-1)//2+1-2)//2+1 tokens for L mel frames.

Full windows are batched: every linear layer is one matmul over all rows of a group of windows, and
attention is one batched matmul over the group's windows. Long clips are streamed group by group, so
memory stays bounded by `max_rows` activation rows whatever the clip length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields

import numpy as np

from pocketomni.audio.features import n_audio_tokens
from pocketomni.errors import MediaError, ModelFileError
from pocketomni.token2wav.half import dense

__all__ = ["AudioEncoder", "AudioEncoderConfig", "audio_tower_names"]


@dataclass(frozen=True)
class AudioEncoderConfig:
    """Shapes of the audio tower (the HF `audio_config`); defaults are the 7B model's."""

    num_mel_bins: int = 128
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    output_dim: int = 3584
    n_window: int = 100
    max_source_positions: int = 1500
    activation_function: str = "gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_hf(cls, audio_config: Mapping[str, object]) -> AudioEncoderConfig:
        """Build from the HF `thinker_config.audio_config` dict (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in audio_config.items() if k in known})  # type: ignore[arg-type]
        if cfg.activation_function != "gelu":
            raise ModelFileError(
                f"audio tower activation {cfg.activation_function!r} is not supported (only 'gelu'); "
                "this does not look like a Qwen2.5-Omni checkpoint"
            )
        if cfg.d_model % cfg.encoder_attention_heads or (cfg.d_model // cfg.encoder_attention_heads) % 2:
            raise ModelFileError(
                f"audio tower d_model {cfg.d_model} does not split into {cfg.encoder_attention_heads} heads"
            )
        return cfg

    @property
    def window_frames(self) -> int:
        """Mel frames per attention window (2 s)."""
        return 2 * self.n_window


def audio_tower_names(cfg: AudioEncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the encoder needs, keyed by its HF name relative to `thinker.audio_tower.`."""
    d, f, m = cfg.d_model, cfg.encoder_ffn_dim, cfg.num_mel_bins
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": (d, m, 3),
        "conv1.bias": (d,),
        "conv2.weight": (d, d, 3),
        "conv2.bias": (d,),
        "ln_post.weight": (d,),
        "ln_post.bias": (d,),
        "proj.weight": (cfg.output_dim, d),
        "proj.bias": (cfg.output_dim,),
    }
    per_layer = {
        "self_attn.q_proj.weight": (d, d),
        "self_attn.q_proj.bias": (d,),
        "self_attn.k_proj.weight": (d, d),
        "self_attn.v_proj.weight": (d, d),
        "self_attn.v_proj.bias": (d,),
        "self_attn.out_proj.weight": (d, d),
        "self_attn.out_proj.bias": (d,),
        "self_attn_layer_norm.weight": (d,),
        "self_attn_layer_norm.bias": (d,),
        "fc1.weight": (f, d),
        "fc1.bias": (f,),
        "fc2.weight": (d, f),
        "fc2.bias": (d,),
        "final_layer_norm.weight": (d,),
        "final_layer_norm.bias": (d,),
    }
    for i in range(cfg.encoder_layers):
        shapes.update({f"layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def audio_gguf_name(hf: str) -> str:
    """mmproj tensor name of an audio-tower weight (HF name relative to `thinker.audio_tower.`)."""
    fixed = {"conv1.weight": "a.conv1d.1.weight", "conv1.bias": "a.conv1d.1.bias", "conv2.weight": "a.conv1d.2.weight",
             "conv2.bias": "a.conv1d.2.bias", "ln_post.weight": "a.post_ln.weight", "ln_post.bias": "a.post_ln.bias",
             "proj.weight": "mm.a.fc.weight", "proj.bias": "mm.a.fc.bias"}
    if hf in fixed:
        return fixed[hf]
    _, i, rest = hf.split(".", 2)  # layers.<i>.<rest>
    leaf = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.out_proj": "attn_out", "self_attn_layer_norm": "ln1", "final_layer_norm": "ln2",
            "fc1": "ffn_up", "fc2": "ffn_down"}
    stem, kind = rest.rsplit(".", 1)
    return f"a.blk.{i}.{leaf[stem]}.{kind}"


# --- numerics -------------------------------------------------------------------------------------

# erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, float32-level), for the exact (erf) GELU.
# Coefficients are pre-scaled: t uses p / sqrt2, the polynomial carries the 1/2 of erfc -> Q.
_P = np.float32(0.3275911 * 0.7071067811865476)
_A = [np.float32(0.5 * a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)]
_GELU_BLOCK = 1 << 15  # elements per block (128 KiB of float32: stays in L2)


def _gelu_block(x: np.ndarray) -> None:
    # x * Phi(x) = relu(x) - |x| * Q(|x|), Q(a) = erfc(a / sqrt2) / 2 = t * poly(t) * exp(-a^2 / 2).
    a = np.abs(x)
    t = a * _P
    t += 1.0
    np.reciprocal(t, out=t)
    q = _A[0] * t
    for c in _A[1:]:
        q += c
        q *= t
    e = np.square(a)
    e *= np.float32(-0.5)
    np.exp(e, out=e)
    q *= e
    q *= a
    np.maximum(x, 0.0, out=x)
    x -= q


def _gelu_(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU in place on a float32 array; returns x. Works on cache-sized row blocks."""
    if not x.flags.c_contiguous:
        raise ValueError("_gelu_ works in place on C-contiguous arrays only")
    rows = x.reshape(-1, x.shape[-1])
    step = max(1, _GELU_BLOCK // x.shape[-1])
    for i in range(0, rows.shape[0], step):
        _gelu_block(rows[i : i + step])
    return x


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    y = x - mu
    var = np.mean(np.square(y), axis=-1, keepdims=True)
    y *= 1.0 / np.sqrt(var + np.float32(eps))
    y *= w
    y += b
    return y


def _sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    # Computed in float32 the way the reference builds its (non-persistent) position buffer.
    step = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(np.float32(-step) * np.arange(channels // 2, dtype=np.float32))
    ang = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1).astype(np.float32)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


# --- the encoder ----------------------------------------------------------------------------------


class EncodingStopped(Exception):
    """An encode was stopped between window groups (the turn was cancelled)."""


class AudioEncoder:
    """Qwen2.5-Omni audio tower: `encode(mel) -> (n_tokens, output_dim)` float32 embeddings."""

    def __init__(
        self,
        config: AudioEncoderConfig,
        weights: Mapping[str, np.ndarray],
        max_rows: int = 1000,
        weights_f32: bool = True,
    ) -> None:
        """`weights` are keyed by HF names relative to `thinker.audio_tower.` (see audio_tower_names).

        `max_rows` bounds the activation rows processed at once (100 rows per 2 s window); it trades
        memory for fewer passes over the weights on long clips. `weights_f32=False` keeps float16
        matrices as given (e.g. memory-mapped from a GGUF) and widens one matrix at a time while
        encoding: half the resident weight memory, at some speed cost.
        """
        self.config = cfg = config
        need = audio_tower_names(cfg)
        missing = [k for k in need if k not in weights]
        if missing:
            raise ModelFileError(
                f"audio tower weights missing {len(missing)} tensors (first: {missing[:3]}); "
                "re-convert the model folder with `pocketomni convert`"
            )
        w: dict[str, np.ndarray] = {}
        for name, shape in need.items():
            arr = np.asarray(weights[name])
            if arr.shape != shape:
                if arr.size != int(np.prod(shape)):
                    raise ModelFileError(
                        f"audio tower tensor {name} has shape {arr.shape}, expected {shape}; "
                        "the file does not match its audio config"
                    )
                arr = arr.reshape(shape)
            keep = not weights_f32 and arr.ndim == 2 and arr.dtype == np.float16
            w[name] = arr if keep else _f32(arr)
        # Convolutions as matmuls over [x[t-1], x[t], x[t+1]] (tap-major) column blocks.
        self._c1w = _f32(w.pop("conv1.weight").transpose(2, 1, 0).reshape(3 * cfg.num_mel_bins, -1))
        self._c2w = _f32(w.pop("conv2.weight").transpose(2, 1, 0).reshape(3 * cfg.d_model, -1))
        self._w = w
        self._heads = cfg.encoder_attention_heads
        self._pos = _sinusoids(min(cfg.n_window, cfg.max_source_positions), cfg.d_model)
        self.max_rows = max(int(max_rows), cfg.n_window)

    @classmethod
    def from_gguf_tensors(
        cls,
        config: AudioEncoderConfig,
        tensors: Mapping[str, np.ndarray],
        name_map: Callable[[str], str],
        max_rows: int = 1000,
        weights_f32: bool = True,
    ) -> AudioEncoder:
        """Build from (dequantised) mmproj GGUF tensors; `name_map(hf_name) -> gguf_name`."""
        picked: dict[str, np.ndarray] = {}
        for hf_name in audio_tower_names(config):
            key = name_map(hf_name)
            if key not in tensors:
                raise ModelFileError(
                    f"mmproj GGUF lacks audio tensor {key!r} (for {hf_name}); "
                    "re-convert the model folder with `pocketomni convert`"
                )
            picked[hf_name] = tensors[key]
        return cls(config, picked, max_rows=max_rows, weights_f32=weights_f32)

    def _m(self, name: str) -> np.ndarray:
        """A weight matrix as float32: float16 ones widened into this thread's scratch buffer (ggml's
        F16C/NEON row conversion, ~10x numpy's cast; exact either way), valid until the next `_m`."""
        return dense(self._w[name])

    # --- pieces -----------------------------------------------------------------------------------

    def _convs(self, mel_windows: np.ndarray) -> np.ndarray:
        """(g, mel_bins, T) equal-length windows -> (g, (T-1)//2+1, d_model) with positions added."""
        g, bins, t = mel_windows.shape
        d = self.config.d_model
        # conv1 (k3, pad 1): columns [x[t-1], x[t], x[t+1]], zeros outside the window.
        x = mel_windows.transpose(0, 2, 1)
        cols = np.zeros((g, t, 3 * bins), np.float32)
        cols[:, 1:, :bins] = x[:, :-1]
        cols[:, :, bins : 2 * bins] = x
        cols[:, :-1, 2 * bins :] = x[:, 1:]
        h = (cols.reshape(g * t, -1) @ self._c1w).reshape(g, t, d)
        h += self._w["conv1.bias"]
        _gelu_(h)
        # conv2 (k3, stride 2, pad 1): output j reads h[2j-1], h[2j], h[2j+1].
        t2 = (t - 1) // 2 + 1
        cols = np.zeros((g, t2, 3 * d), np.float32)
        cols[:, 1:, :d] = h[:, 1 : 2 * t2 - 2 : 2]
        cols[:, :, d : 2 * d] = h[:, 0::2]
        cols[:, : t // 2, 2 * d :] = h[:, 1::2]
        del h
        y = (cols.reshape(g * t2, -1) @ self._c2w).reshape(g, t2, d)
        y += self._w["conv2.bias"]
        _gelu_(y)
        y += self._pos[:t2]
        return y

    def _attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
        """Attention within windows of n rows: q, k, v are (rows, d) with rows a multiple of n."""
        rows, d = q.shape
        hd = d // self._heads
        shape = (rows // n, n, self._heads, hd)
        # Contiguous per-head copies so each (n x hd) product goes to BLAS.
        qh = np.ascontiguousarray(q.reshape(shape).transpose(0, 2, 1, 3))
        kh = np.ascontiguousarray(k.reshape(shape).transpose(0, 2, 3, 1))
        vh = np.ascontiguousarray(v.reshape(shape).transpose(0, 2, 1, 3))
        s = qh @ kh  # (windows, heads, n, n); q was pre-scaled
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        o = s @ vh  # (windows, heads, n, hd)
        return o.transpose(0, 2, 1, 3).reshape(rows, d)

    def _layer(self, i: int, x: np.ndarray, spans: list[tuple[int, int, int]]) -> np.ndarray:
        w, p, eps = self._w, f"layers.{i}.", self.config.layer_norm_eps
        h = _layer_norm(x, w[p + "self_attn_layer_norm.weight"], w[p + "self_attn_layer_norm.bias"], eps)
        q = h @ self._m(p + "self_attn.q_proj.weight").T
        q += w[p + "self_attn.q_proj.bias"]
        q *= np.float32((self.config.d_model // self._heads) ** -0.5)
        k = h @ self._m(p + "self_attn.k_proj.weight").T
        v = h @ self._m(p + "self_attn.v_proj.weight").T
        v += w[p + "self_attn.v_proj.bias"]
        att = np.empty_like(q)
        for start, stop, n in spans:
            att[start:stop] = self._attend(q[start:stop], k[start:stop], v[start:stop], n)
        del q, k, v
        out = att @ self._m(p + "self_attn.out_proj.weight").T
        out += w[p + "self_attn.out_proj.bias"]
        x = x + out
        h = _layer_norm(x, w[p + "final_layer_norm.weight"], w[p + "final_layer_norm.bias"], eps)
        f = h @ self._m(p + "fc1.weight").T
        f += w[p + "fc1.bias"]
        _gelu_(f)
        out = f @ self._m(p + "fc2.weight").T
        del f
        out += w[p + "fc2.bias"]
        x += out
        return x

    def _groups(self, n_frames: int) -> Iterator[tuple[int, int, int]]:
        """Yield (first_frame, full_windows, tail_frames) per group; the tail joins the last group."""
        wf = self.config.window_frames
        n_full, tail = divmod(n_frames, wf)
        per = max(self.max_rows // self.config.n_window, 1)
        if n_full == 0:
            yield 0, 0, tail
            return
        for g0 in range(0, n_full, per):
            g = min(per, n_full - g0)
            yield g0 * wf, g, tail if g0 + g == n_full else 0

    def _encode_group(self, mel: np.ndarray, start: int, n_full: int, tail: int,
                      should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        wf, nw = self.config.window_frames, self.config.n_window
        parts, spans, row = [], [], 0
        if n_full:
            block = mel[:, start : start + n_full * wf].reshape(mel.shape[0], n_full, wf).transpose(1, 0, 2)
            parts.append(self._convs(block).reshape(n_full * nw, -1))
            spans.append((0, n_full * nw, nw))
            row = n_full * nw
        if tail:
            t0 = start + n_full * wf
            y = self._convs(mel[None, :, t0 : t0 + tail])[0]
            parts.append(y)
            spans.append((row, row + y.shape[0], y.shape[0]))
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        for i in range(self.config.encoder_layers):
            if should_stop is not None and should_stop():  # a group is seconds of work at full size
                raise EncodingStopped
            x = self._layer(i, x, spans)
        pairs = x.shape[0] // 2
        x = x[: 2 * pairs].reshape(pairs, 2, -1).mean(axis=1, dtype=np.float32)
        x = _layer_norm(x, self._w["ln_post.weight"], self._w["ln_post.bias"], self.config.layer_norm_eps)
        out = x @ self._m("proj.weight").T
        out += self._w["proj.bias"]
        return out

    # --- public -----------------------------------------------------------------------------------

    def n_tokens(self, n_frames: int) -> int:
        """Tokens `encode` returns for a mel of `n_frames` frames."""
        return n_audio_tokens(n_frames)

    def encode(self, mel: np.ndarray, should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """(num_mel_bins, L) log-mel of one clip -> (n_tokens(L), output_dim) float32 embeddings.
        `should_stop` is checked between window groups and between a group's layers: EncodingStopped
        when it returns True."""
        cfg = self.config
        mel = np.asarray(mel)
        if mel.ndim != 2 or mel.shape[0] != cfg.num_mel_bins:
            raise MediaError(
                f"audio encoder expects a ({cfg.num_mel_bins}, frames) log-mel, got shape {mel.shape}; "
                "compute it with pocketomni.audio.features.log_mel"
            )
        n = n_audio_tokens(mel.shape[1])
        if n < 1:
            raise MediaError(f"log-mel has {mel.shape[1]} frames; at least 3 are needed for one audio token")
        mel = _f32(mel)
        out = np.empty((n, cfg.output_dim), np.float32)
        at = 0
        for start, n_full, tail in self._groups(mel.shape[1]):
            if should_stop is not None and should_stop():
                raise EncodingStopped
            y = self._encode_group(mel, start, n_full, tail, should_stop)
            out[at : at + y.shape[0]] = y
            at += y.shape[0]
        assert at == n, (at, n)
        return out
