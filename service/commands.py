"""The ``serve`` and ``demo`` subcommands of ``magic-attr``.

Heavy imports (FastAPI, uvicorn, Ray, torch) happen inside the command
functions, so ``magic-attr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

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
                       help="allow a non-loopback --host without API keys (MAGIC_API_KEYS), "
                            "like MAGIC_ALLOW_UNAUTHENTICATED_PUBLIC=true; anyone who reaches "
                            "the port can then use the API")
    serve.set_defaults(func=cmd_serve)

    hash_key = subparsers.add_parser(
        "hash-key", help="print the SHA-256 hash of an API key, for MAGIC_API_KEYS",
        description="Read an API key from standard input (or a prompt) and print its SHA-256 "
                    "hex digest, the form MAGIC_API_KEYS stores. With --generate, create a "
                    "random key and print the key and its hash.")
    hash_key.add_argument("--generate", action="store_true",
                          help="create a random 256-bit key instead of reading one")
    hash_key.set_defaults(func=cmd_hash_key)

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

    try:
        settings = Settings()
    except ValidationError as error:
        print(f"error: invalid settings:\n{error}", file=sys.stderr)
        return 2
    problem = bind_problem(args.host, settings, allow_remote=args.allow_remote)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not settings.api_keys and not _is_loopback(args.host):
        logger.warning("serving on %s without API keys: anyone who reaches the port can use "
                       "the API", args.host)
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


def bind_problem(host: str, settings, allow_remote: bool = False) -> Optional[str]:
    """Return why the API must not listen on ``host`` with ``settings``, or None if it may.

    A non-loopback address needs MAGIC_API_KEYS, or an explicit opt-out of
    authentication (MAGIC_ALLOW_UNAUTHENTICATED_PUBLIC or --allow-remote).
    """
    if _is_loopback(host) or settings.api_keys:
        return None
    if allow_remote or settings.allow_unauthenticated_public:
        return None
    return (f"--host {host} is not a loopback address and MAGIC_API_KEYS is empty, so anyone "
            "who reaches the port could use the API; configure API keys (`magic-attr "
            "hash-key --generate`), or set MAGIC_ALLOW_UNAUTHENTICATED_PUBLIC=true to listen "
            "there without authentication")


def cmd_hash_key(args: argparse.Namespace) -> int:
    import getpass
    import secrets

    from .auth import hash_key

    if args.generate:
        key = secrets.token_urlsafe(32)
        print(f"key:  {key}\nhash: {hash_key(key)}")
        return 0
    if sys.stdin.isatty():
        key = getpass.getpass("API key: ")
    else:
        key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        print("error: the API key is empty; pipe it to standard input or type it at the "
              "prompt", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
