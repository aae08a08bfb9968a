"""`pocketomni serve`: an OpenAI-compatible HTTP server on one loaded model, with streamed speech.

    from pocketomni.serve import ServeConfig, create_app
    app = create_app(omni, ServeConfig(max_active=2))   # any ASGI server runs it; the CLI uses uvicorn

Needs the `serve` extra (pip install 'pocketomni[serve]': starlette + uvicorn).
"""

from __future__ import annotations

from pocketomni.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):  # starlette is imported only when the app is built
    if name == "create_app":
        from pocketomni.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'pocketomni.serve' has no attribute {name!r}")
