"""Video limits: what a video costs in context and what to do when it does not fit.

Limits of a video (documented; `video_cost` / `overflow_advice` compute them):
- frames: 2 per second, at most 768 (VideoConfig.max_frames; longer videos are sampled more sparsely)
  and at most 1800 s of video at all (VideoConfig.max_seconds);
- tokens: per second, (H / 28) * (W / 28) frame tokens (the frames are resized to at least 128 and at
  most 768 tokens per second by the reference's budget) plus 25 tokens of sound with
  use_audio_in_video; everything must fit the chat's free context with room for the reply, e.g. a
  4096-token context holds about 31 s of silent video at the smallest frame size (128 tokens/s) or
  about 26 s with its sound (153 tokens/s). A turn that does not fit raises ContextOverflowError
  saying how many seconds fit.
"""


from __future__ import annotations

from dataclasses import dataclass

from pocketomni.media.video import PreparedVideo

__all__ = ["VideoCost", "overflow_advice", "video_cost"]

AUDIO_TOKENS_PER_SECOND = 25


@dataclass(frozen=True)
class VideoCost:
    """Context cost of one prepared video."""

    seconds: float  # covered by the sampled frames
    frame_tokens: int
    audio_tokens: int

    @property
    def tokens(self) -> int:
        return self.frame_tokens + self.audio_tokens

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float(self.tokens)


def video_cost(video: PreparedVideo, use_audio: bool = True) -> VideoCost:
    """Frame and sound tokens of a prepared video and the seconds they cover."""
    seconds = video.grid_thw[0] * video.seconds_per_grid
    audio = video.audio.n_tokens if (use_audio and video.audio is not None) else 0
    return VideoCost(float(seconds), int(video.n_video_tokens), int(audio))


def overflow_advice(costs: list[VideoCost], needed: int, room: int) -> str:
    """How to shorten the videos of a turn that needs `needed` cells where `room` are free."""
    if not costs:
        return ""
    over = needed - room
    total = sum(c.tokens for c in costs)
    secs = sum(c.seconds for c in costs)
    per_s = total / secs if secs > 0 else float(total)
    fit = max(0.0, secs - over / per_s) if per_s > 0 else 0.0
    with_audio = any(c.audio_tokens for c in costs)
    tip = (f" The video{'s' if len(costs) > 1 else ''} ({secs:.1f} s) cost{'' if len(costs) > 1 else 's'} "
           f"{total} tokens, about {per_s:.0f} per second; about {fit:.0f} s fit{'s' if fit == 1 else ''} here: "
           f"cut {'them' if len(costs) > 1 else 'it'} to at most {max(0, 2 * int(fit // 2))} s, lower the frame "
           "resolution (fewer tokens per second, down to 128 frame tokens/s)")
    if with_audio:
        tip += f", or send it with use_audio_in_video=False (saves {AUDIO_TOKENS_PER_SECOND} tokens/s)"
    return tip + "."
