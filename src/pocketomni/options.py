"""Options as dataclasses with documented fields. Unknown keys and out-of-range values are rejected."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from typing_extensions import Self

from pocketomni.errors import OptionsError
from pocketomni.token2wav.first_chunk import check_first_chunk

T = TypeVar("T", bound="_Options")


class _Options:
    """Shared validation: construct from keyword arguments or a mapping, reject unknown keys."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, **kwargs: Any) -> Self:
        """Build options from a mapping and/or keywords; unknown keys raise OptionsError."""
        merged = {**(values or {}), **kwargs}
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(merged) - known)
        if unknown:
            raise OptionsError(
                f"unknown {cls.__name__} option(s): {', '.join(unknown)}; valid options are: {', '.join(sorted(known))}"
            )
        return cls(**merged)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated like the constructor)."""
        return type(self).from_dict(dataclasses.asdict(self), **changes)  # type: ignore[call-overload]


MAX_SEED = 2**63 - 1


def check_text(text: str, what: str) -> None:
    """OptionsError unless `text` can be encoded as UTF-8 (lone surrogates, e.g. from bytes decoded
    with errors='surrogateescape', cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise OptionsError(
            f"{what} is not valid UTF-8 text: it holds a lone surrogate {text[e.start]!r} at index {e.start} "
            "(undecodable bytes, e.g. read with errors='surrogateescape'); decode the input with "
            "errors='replace' or remove those characters"
        ) from None


def _check_int(name: str, value: Any, low: int, high: int | None = None, hint: str = "") -> None:
    """Integers only (True/False are not counts or seeds), within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise OptionsError(f"{name}={value!r} must be {span}{'; ' + hint if hint else ''}")


def _check_seed(value: Any) -> None:
    if value is not None:
        _check_int("seed", value, 0, MAX_SEED, "or None to pick one per turn")


def _check_range(name: str, value: float, low: float, high: float, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionsError(f"{name}={value!r} must be a number in [{low}, {high}]")
    if not (low <= value <= high):
        raise OptionsError(f"{name}={value!r} is out of range [{low}, {high}]{'; ' + hint if hint else ''}")


@dataclass(frozen=True)
class GenerationOptions(_Options):
    """How the thinker writes its reply.

    max_tokens: most reply tokens per turn (the turn ends with finish_reason "length" there).
    temperature: 0 means greedy (deterministic); higher is more random.
    top_k: keep only the k most likely tokens (0 disables).
    top_p: keep the smallest set of tokens whose probability reaches p (1.0 disables).
    repetition_penalty: >1 discourages repeating tokens already in the context (1.0 disables).
    seed: random seed for sampling; None picks one per turn.
    stop: strings that end the reply when they appear (not included in the reply).
    """

    max_tokens: int = 1024
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise OptionsError("stop must be a list of non-empty strings, e.g. stop=['\\n\\n']")
        object.__setattr__(self, "stop", tuple(self.stop))
        for s in self.stop:
            check_text(s, "a stop string")
        _check_int("max_tokens", self.max_tokens, 1)
        _check_range("temperature", self.temperature, 0.0, 10.0, "use 0 for greedy decoding")
        _check_range("top_p", self.top_p, 0.0, 1.0)
        _check_range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)
        _check_int("top_k", self.top_k, 0, hint="0 disables it")
        _check_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SpeechOptions(_Options):
    """How the talker turns the reply into speech codes (defaults are the reference's).

    temperature, top_k, top_p, repetition_penalty: the talker's sampling (temperature 0 = greedy).
    max_codes: most speech codes per reply (50 codes = 1 second of speech).
    seed: random seed for sampling and the vocoder's noise; None picks one per turn.
    first_chunk_codes, first_chunk_future: the first sound is rendered on its own once this many codes
      exist, of which the last `first_chunk_future` serve as the DiT's future context only; after the
      seam the audio is the stream's own (pocketomni.token2wav.first_chunk; 0 codes: no first chunk,
      the first sound after 72 codes with the fast preset, 49 with reference). Default 24 / 12, chosen
      from benchmarks/results/first_chunk.md.
    pipelined: run the talker and token2wav in their own threads beside the thinker (text never waits
      for speech) instead of one after another in the turn's thread; same tokens, codes and audio either
      way. None: chosen from the machine's cores (engine/speech_pipeline.py says how).
    first_audio_first: in a pipelined reply, the text waits while token2wav renders, until the first audio
      (then never again): the first chunk gets the cores instead of sharing one with the thinker. None: when
      the stages' threads outnumber the cores (2 cores, synthetic 3B: first audio 5.2 s against 6.4 s,
      benchmarks/results/spoken_turn.md); False: the text never waits for speech.
    threads: (thinker, talker, token2wav) CPU threads of a spoken reply's stages. None: a pipelined reply
      splits the usable cores (engine/cpu_split.py), one after another every stage gets the model's threads.
    """

    temperature: float = 0.9
    top_k: int = 40
    top_p: float = 0.8
    repetition_penalty: float = 1.05
    max_codes: int = 4096
    seed: int | None = None
    first_chunk_codes: int = 24
    first_chunk_future: int = 12
    pipelined: bool | None = None
    first_audio_first: bool | None = None
    threads: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        check_first_chunk(self.first_chunk_codes, self.first_chunk_future)
        if self.pipelined is not None and not isinstance(self.pipelined, bool):
            raise OptionsError(f"pipelined={self.pipelined!r} must be True, False or None (chosen from the machine)")
        if self.first_audio_first is not None and not isinstance(self.first_audio_first, bool):
            raise OptionsError(f"first_audio_first={self.first_audio_first!r} must be True, False or None (chosen "
                               "from the machine)")
        if self.threads is not None:
            t = self.threads
            if (isinstance(t, (str, bytes)) or not hasattr(t, "__len__") or len(t) != 3
                    or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in t)):
                raise OptionsError(f"threads={t!r} must be three positive integers (thinker, talker, token2wav) "
                                   "or None")
            object.__setattr__(self, "threads", tuple(t))  # a saved chat gives a list back
        _check_range("temperature", self.temperature, 0.0, 10.0, "use 0 for greedy decoding")
        _check_range("top_p", self.top_p, 0.0, 1.0)
        _check_range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)
        _check_int("top_k", self.top_k, 0, hint="0 disables it")
        _check_int("max_codes", self.max_codes, 1)
        _check_seed(self.seed)


def resolve_options(base: GenerationOptions, options: Any, overrides: Mapping[str, Any]) -> GenerationOptions:
    """`options` (None: `base`; GenerationOptions; or a dict) with keyword `overrides` applied."""
    if options is None:
        opts = base
    elif isinstance(options, GenerationOptions):
        opts = options
    elif isinstance(options, Mapping):
        opts = GenerationOptions.from_dict(options)
    else:
        raise OptionsError(f"options must be GenerationOptions or a dict, got {type(options).__name__}")
    return opts.replace(**overrides) if overrides else opts
