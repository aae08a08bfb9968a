"""`pocketomni serve MODEL_DIR`: the OpenAI-compatible HTTP server (localhost by default)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `serve` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "serve", help="serve a model over HTTP with the OpenAI chat-completions API (streamed speech too)",
        description="Serve a model folder at http://HOST:PORT/v1 (OpenAI chat completions: text, images, "
                    "audio in; text and streamed speech out). Needs the serve extra: pip install 'pocketomni[serve]'.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a folder from `pocketomni convert` (or thinker + mmproj GGUFs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--model-name", default=None, help="model id clients ask for (default: the folder's name)")
    p.add_argument("--allow-local-files", default=None, metavar="DIR",
                   help="let requests name files inside DIR (file:// URLs or absolute paths) instead of inline data")
    p.add_argument("--max-active", type=int, default=2, help="requests generating at once (default 2)")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting for a slot; more get 429 (default 16)")
    p.add_argument("--queue-timeout", type=float, default=60.0, help="seconds a request may wait; then 503 (default 60)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds one reply may take (default 600)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MB (default 32)")
    p.add_argument("--cache-size", type=int, default=4,
                   help="finished conversations kept so follow-up turns skip re-reading their history (default 4)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context window of each chat in tokens (default 4096)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run_serve)
    return p


def run_serve(args: argparse.Namespace) -> int:
    from pocketomni.errors import FeatureUnavailableError

    try:
        import uvicorn

        from pocketomni.serve import ServeConfig, create_app
    except ImportError as e:
        raise FeatureUnavailableError(f"`pocketomni serve` needs starlette and uvicorn ({e}); install them with: "
                                      "pip install 'pocketomni[serve]'") from e
    import pocketomni as po

    config = ServeConfig(model_id=args.model_name or "", max_active=args.max_active, max_queue=args.max_queue,
                         queue_timeout=args.queue_timeout, request_timeout=args.request_timeout,
                         max_body_bytes=int(args.max_body_mb * 1024 * 1024), cache_size=args.cache_size,
                         allow_local_files=args.allow_local_files)
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: other machines can reach this server, and it has no "
              "authentication", file=sys.stderr)
    with po.Omni.load_sync(args.model_dir, n_ctx=args.n_ctx, n_threads=args.threads) as omni:
        app = create_app(omni, config)
        print(f"serving {app.state.server.model_id!r} at http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
