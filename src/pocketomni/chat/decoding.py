"""The layers under a chat turn (as in mlx-lm: a step layer, a streaming layer, the turn on top).

    TokenChooser   logits -> token: the caller's logits processors, then the sampler (greedy, or the
                   reference's repetition penalty / temperature / top-k / top-p)
    ReplyText      token -> text pieces: detokenizes incrementally and holds back text that may be
                   the start of a stop string
    StopScanner    the stop-string part of ReplyText, on text

A logits processor is `fn(token_ids, logits) -> logits`: `token_ids` is every id of the conversation so
far (prompt and reply), `logits` the float32 row for the next token (return a new array or the same one
changed). Pass them as `chat.send(..., logits_processors=[...])`, e.g. to ban tokens:

    def no_digits(ids, logits):
        logits[digit_ids] = -np.inf
        return logits
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pocketomni.backend.llama import TokenTextStream
from pocketomni.backend.sampling import SamplingParams, sample
from pocketomni.errors import OptionsError

__all__ = ["LogitsProcessor", "ReplyText", "StopScanner", "TokenChooser", "check_logits_processors"]

LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_logits_processors(processors: object) -> tuple[LogitsProcessor, ...]:
    """The processors as a tuple; OptionsError unless a list/tuple of callables."""
    if processors is None:
        return ()
    if not isinstance(processors, (list, tuple)) or not all(callable(p) for p in processors):
        raise OptionsError("logits_processors must be a list of functions fn(token_ids, logits) -> logits")
    return tuple(processors)


class TokenChooser:
    """Chooses each reply token from the thinker's logits."""

    def __init__(self, params: SamplingParams, seed: int | None, history: Callable[[], np.ndarray],
                 processors: Sequence[LogitsProcessor] = ()) -> None:
        self.params, self.history, self.processors = params, history, tuple(processors)
        self.rng = np.random.default_rng(seed)
        self.penalize = params.repetition_penalty != 1.0
        self.fast_greedy = params.is_greedy and not self.penalize

    def __call__(self, logits: np.ndarray) -> int:
        if self.processors:
            ids = self.history()
            for proc in self.processors:
                out = proc(ids, logits)
                if not isinstance(out, np.ndarray) or out.shape != logits.shape:
                    raise OptionsError(f"logits processor {getattr(proc, '__name__', proc)!r} must return an "
                                       f"array of shape {logits.shape}")
                logits = out
        if self.fast_greedy:  # the sampler's greedy path without its copies: same result
            return int(np.argmax(logits))
        return sample(logits, self.params, self.rng, penalty_ids=self.history() if self.penalize else ())


class StopScanner:
    """Finds stop strings in streamed text; holds back text that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.buf = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was found)."""
        if not self.stops:
            return text, False
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), hold, -1):
                if self.buf.endswith(s[:k]):
                    hold = k
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class ReplyText:
    """Reply tokens -> the text pieces to show, stopping at a stop string; `text` is all shown so far."""

    def __init__(self, stream: TokenTextStream, stops: Sequence[str]) -> None:
        self.stream, self.stopper = stream, StopScanner(stops)
        self.pieces: list[str] = []

    def push(self, token: int) -> tuple[str, bool]:
        """(new text to show, whether a stop string ended the reply)."""
        piece, hit = self.stopper.feed(self.stream.push(token))
        if piece:
            self.pieces.append(piece)
        return piece, hit

    def flush(self) -> str:
        """The held-back rest once the reply ended without a stop string."""
        tail = self.stopper.feed(self.stream.flush())[0] + self.stopper.flush()
        if tail:
            self.pieces.append(tail)
        return tail

    @property
    def text(self) -> str:
        return "".join(self.pieces)
