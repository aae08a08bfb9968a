"""Settings of one `pocketomni serve` process: limits, queue, caches, which local files may be read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pocketomni.errors import OptionsError

__all__ = ["ServeConfig"]


@dataclass(frozen=True)
class ServeConfig:
    """How the server admits and runs requests.

    model_id: the name `/v1/models` lists and requests must ask for (default: the model folder's name).
    max_active: requests generating at once (each holds a chat, i.e. a context of n_ctx tokens; they
      take turns on the model's lock token by token).
    max_queue: requests waiting for a free slot; one more is refused with 429.
    queue_timeout: seconds a request may wait for a slot before it is refused with 503.
    request_timeout: seconds one request may generate; then it is cancelled (504, or an error event
      in a stream).
    max_body_bytes: largest request body (base64 media included); larger ones get 413.
    cache_size: finished conversations kept for prefix reuse (each keeps its context in memory).
    allow_local_files: a folder whose files `image_url` / `input_audio` / `video_url` parts may name
      (file:// URLs or absolute paths); None (default) accepts data: URLs and inline base64 only.
    """

    model_id: str = ""
    max_active: int = 2
    max_queue: int = 16
    queue_timeout: float = 60.0
    request_timeout: float = 600.0
    max_body_bytes: int = 32 * 1024 * 1024
    cache_size: int = 4
    allow_local_files: Path | None = None

    def __post_init__(self) -> None:
        for name in ("max_active", "max_body_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OptionsError(f"{name}={v!r} must be a positive integer")
        for name in ("max_queue", "cache_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise OptionsError(f"{name}={v!r} must be an integer >= 0")
        for name in ("queue_timeout", "request_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise OptionsError(f"{name}={v!r} must be a positive number of seconds")
        if self.allow_local_files is not None:
            root = Path(self.allow_local_files).expanduser().resolve()
            if not root.is_dir():
                raise OptionsError(f"allow_local_files={str(self.allow_local_files)!r} is not a folder; "
                                   "name an existing folder whose files requests may read")
            object.__setattr__(self, "allow_local_files", root)
