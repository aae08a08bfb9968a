"""Token2wav configs, read from the HF `token2wav_config` dict (keys `dit_config`, `bigvgan_config`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pocketomni.errors import ModelFileError


def _from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in d.items():
        if k in names:
            kwargs[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
    return cls(**kwargs)


@dataclass(frozen=True)
class DiTConfig:
    """Fields of the HF `dit_config` used by the DiT and its ECAPA speaker encoder."""

    hidden_size: int = 1024
    num_hidden_layers: int = 22
    num_attention_heads: int = 16
    head_dim: int = 64
    ff_mult: int = 2
    emb_dim: int = 512
    block_size: int = 24
    look_ahead_layers: tuple[int, ...] = (10,)
    look_backward_layers: tuple[int, ...] = (0, 20)
    repeats: int = 2
    num_embeds: int = 8193
    mel_dim: int = 80
    max_position_embeddings: int = 32768
    rope_theta: float = 10000.0
    enc_emb_dim: int = 192
    enc_dim: int = 128
    enc_channels: tuple[int, ...] = (256, 256, 256, 256, 768)
    enc_kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    enc_dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    enc_attention_channels: int = 64
    enc_res2net_scale: int = 2
    enc_se_channels: int = 64

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> DiTConfig:
        """Build from an HF `dit_config` dict (unknown keys ignored)."""
        cfg = _from_dict(cls, d)
        rope = d.get("rope_parameters") or {}
        theta = rope.get("rope_theta", d.get("rope_theta", cfg.rope_theta))
        cfg = dataclasses.replace(cfg, rope_theta=float(theta))
        if len(cfg.enc_channels) != len(cfg.enc_kernel_sizes) or len(cfg.enc_channels) != len(
            cfg.enc_dilations
        ):
            raise ModelFileError(
                "dit_config: enc_channels, enc_kernel_sizes and enc_dilations differ in length."
            )
        return cfg

    @property
    def layers_back(self) -> frozenset[int]:
        return frozenset(i for i in self.look_backward_layers if 0 <= i < self.num_hidden_layers)

    @property
    def layers_ahead(self) -> frozenset[int]:
        return frozenset(i for i in self.look_ahead_layers if 0 <= i < self.num_hidden_layers)


@dataclass(frozen=True)
class BigVGANConfig:
    """Fields of the HF `bigvgan_config`."""

    mel_dim: int = 80
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = field(default=((1, 3, 5), (1, 3, 5), (1, 3, 5)))
    upsample_rates: tuple[int, ...] = (5, 3, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 7, 4, 4, 4, 4)

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> BigVGANConfig:
        """Build from an HF `bigvgan_config` dict (unknown keys ignored)."""
        return _from_dict(cls, d)

    @property
    def hop(self) -> int:
        """Waveform samples per mel frame (240 for the real model: 24 kHz / 100 Hz)."""
        n = 1
        for r in self.upsample_rates:
            n *= r
        return n
