"""The three names MNN's logger imports; none of them sends anything."""

from __future__ import annotations

from typing import Any

from aliyun.log.logitem import LogItem

__all__ = ["LogClient", "LogItem", "PutLogsRequest"]


class LogClient:
    """Accepts MNN's credentials and discards every request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def put_logs(self, request: Any) -> None:
        return None


class PutLogsRequest:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass
