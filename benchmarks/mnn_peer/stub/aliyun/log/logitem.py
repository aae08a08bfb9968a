"""A log record that is never sent."""

from __future__ import annotations

from typing import Any


class LogItem:
    def set_time(self, t: int) -> None:
        pass

    def set_contents(self, contents: Any) -> None:
        pass
