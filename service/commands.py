"""The ``serve`` and ``demo`` subcommands of ``magic-attr``.

Heavy imports (FastAPI, uvicorn, Ray, torch) happen inside the command
functions, so ``magic-attr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def register(subparsers) -> None:
    """Add ``serve`` and ``demo`` to the ``magic-attr`` subcommands."""
    serve = subparsers.add_parser(
        "serve", help="run the REST service (Redis and Ray start embedded unless configured)",
        description="Run the attribution service. Settings come from the environment: "
                    "REDIS_URL, RAY_ADDRESS and MAGIC_* (see service/settings.py).")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help=f"address to listen on (default {DEFAULT_HOST}, loopback only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"TCP port to listen on (default {DEFAULT_PORT})")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback --host; the API has no authentication")
    serve.set_defaults(func=cmd_serve)

    demo = subparsers.add_parser(
        "demo", help="train mnist-mlp and attribute 16 MNIST test images through the service",
        description="Start the embedded stack, train mnist-mlp, submit a job for MNIST test "
                    "images through the client and print their proponents and opponents. "
                    "Scores are cached in the storage folder, so a second run is instant.")
    demo.add_argument("--storage-dir", type=Path, default=None,
                      help="folder for runs and the Redis cache (default: MAGIC_STORAGE_DIR "
                           "or ./magic-data)")
    demo.add_argument("--test-samples", type=int, default=16,
                      help="number of MNIST test images, the first N (default 16)")
    demo.add_argument("--output", type=Path, default=None,
                      help="PNG to write (default <storage-dir>/demo/influence.png)")
    demo.set_defaults(func=cmd_demo)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from .app import create_app
    from .settings import Settings

    if not _is_loopback(args.host) and not args.allow_remote:
        print(f"error: --host {args.host} is not a loopback address and the API has no "
              "authentication; pass --allow-remote to listen there anyway", file=sys.stderr)
        return 2
    try:
        settings = Settings()
    except ValidationError as error:
        print(f"error: invalid settings:\n{error}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .demo import run_demo
    from .settings import Settings

    if not 1 <= args.test_samples <= 1000:
        print(f"error: --test-samples {args.test_samples} must be between 1 and 1000 "
              "(the size of the mnist-mlp test split)", file=sys.stderr)
        return 2
    overrides = {"storage_dir": args.storage_dir} if args.storage_dir else {}
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        print(f"error: invalid settings:\n{error}", file=sys.stderr)
        return 2
    return run_demo(settings, test_samples=args.test_samples, output=args.output)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
