"""Token2wav in numpy float32: codec codes -> DiT mel -> BigVGAN 24 kHz waveform, one-shot or streamed.

tw = Token2Wav.from_weights(weights, token2wav_config)   # HF names, HF config dict
spk = tw.speaker(cond, ref_mel, name="Chelsie")           # ECAPA once per speaker (cached by name)
wav = tw.render(codes, spk, preset="fast", seed=0)
s = tw.stream(spk, preset="fast", seed=0)                 # feed codes as the talker makes them
chunks = [s.feed(c) for c in code_pieces] + [s.finish()]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pocketomni.audio.rates import OUTPUT_RATE
from pocketomni.token2wav.bigvgan import BigVGAN
from pocketomni.token2wav.config import BigVGANConfig, DiTConfig
from pocketomni.token2wav.dit import DiT, SpeakerCond
from pocketomni.token2wav.solver import PRESETS, Preset, SolverPlan, get_preset, make_plan
from pocketomni.token2wav.streaming import NoiseSource, SpeechStream, solve_mel

__all__ = [
    "PRESETS",
    "SAMPLE_RATE",
    "BigVGAN",
    "BigVGANConfig",
    "DiT",
    "DiTConfig",
    "NoiseSource",
    "Preset",
    "SolverPlan",
    "SpeakerCond",
    "SpeechStream",
    "Token2Wav",
    "make_plan",
]

SAMPLE_RATE = OUTPUT_RATE
DIT_PREFIX = "code2wav_dit_model."
BIGVGAN_PREFIX = "code2wav_bigvgan_model."


class Token2Wav:
    """DiT + BigVGAN with speaker caching, one-shot `render` and incremental `stream`."""

    def __init__(self, dit: DiT, vocoder: BigVGAN):
        self.dit, self.vocoder = dit, vocoder
        self._speakers: dict[str, SpeakerCond] = {}
        self._plans: dict[Any, SolverPlan] = {}

    @classmethod
    def from_weights(cls, weights: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Token2Wav:
        """Build from HF-named tensors (with or without the leading `token2wav.`) and the HF
        token2wav config dict (keys `dit_config`, `bigvgan_config`)."""
        w = {(k.removeprefix("token2wav.")): v for k, v in weights.items()}
        dit_w = {k[len(DIT_PREFIX) :]: v for k, v in w.items() if k.startswith(DIT_PREFIX)}
        voc_w = {k[len(BIGVGAN_PREFIX) :]: v for k, v in w.items() if k.startswith(BIGVGAN_PREFIX)}
        dit = DiT(dit_w, DiTConfig.from_hf(config.get("dit_config") or {}))
        voc = BigVGAN(voc_w, BigVGANConfig.from_hf(config.get("bigvgan_config") or {}))
        return cls(dit, voc)

    def speaker(self, cond: np.ndarray, ref_mel: np.ndarray, name: str | None = None) -> SpeakerCond:
        """Speaker constants from a spk_dict entry (`cond`, `ref_mel`); cached when `name` is given."""
        if name is not None and name in self._speakers:
            return self._speakers[name]
        spk = self.dit.speaker(cond, ref_mel)
        if name is not None:
            self._speakers[name] = spk
        return spk

    def prepare_presets(self) -> int:
        """Cache the DiT's time modulations for every built-in preset, then release the weights that
        made them (they serve nothing else). Returns the bytes released (0 unless memory-mapped)."""
        self.dit.prepare_times(np.concatenate([self.plan(p).times for p in PRESETS.values()]))
        return self.dit.release_time_weights()

    def plan(self, preset: str | Preset) -> SolverPlan:
        p = get_preset(preset)
        if p not in self._plans:
            self._plans[p] = make_plan(p)
        return self._plans[p]

    def _noise(self, noise: np.ndarray | None, seed: int | None) -> NoiseSource:
        return NoiseSource(self.dit.cfg.mel_dim, noise=noise, seed=seed)

    def mel(
        self,
        codes: np.ndarray,
        speaker: SpeakerCond,
        preset: str | Preset = "fast",
        noise: np.ndarray | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """Mel (frames, mel_dim) for codes; `noise` (frames, mel_dim) overrides the seeded noise."""
        return solve_mel(self.dit, speaker, self.plan(preset), np.asarray(codes), self._noise(noise, seed))

    def render(
        self,
        codes: np.ndarray,
        speaker: SpeakerCond,
        preset: str | Preset = "fast",
        noise: np.ndarray | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """One-shot waveform (float32, SAMPLE_RATE) for a whole code sequence."""
        return self.vocoder.vocode(self.mel(codes, speaker, preset, noise, seed))

    def stream(
        self,
        speaker: SpeakerCond,
        preset: str | Preset = "fast",
        mode: str = "exact",
        noise: np.ndarray | None = None,
        seed: int | None = None,
        chunk: int = 36,
        past: int = 24,
        future: int = 12,
        first_chunk_codes: int = 0,
        first_chunk_future: int = 0,
    ) -> SpeechStream:
        """Incremental renderer; see `streaming` for the `exact` and `chunked` modes and `first_chunk`
        for the optional short first chunk (0 codes: none, the stream alone)."""
        return SpeechStream(
            self.dit,
            self.vocoder,
            speaker,
            self.plan(preset),
            self._noise(noise, seed),
            mode,
            chunk,
            past,
            future,
            first_chunk_codes,
            first_chunk_future,
        )
