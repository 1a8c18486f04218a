"""The embedded Redis server: storage folder locking."""

import pytest

from service.embedded import EmbeddedRedis, EmbeddedRedisError


def test_second_server_on_same_folder_rejected(tmp_path):
    first = EmbeddedRedis(tmp_path)
    first.start()
    try:
        with pytest.raises(EmbeddedRedisError, match="another service"):
            EmbeddedRedis(tmp_path).start()
    finally:
        first.stop()


def test_orphaned_server_keeps_folder_locked(tmp_path):
    first = EmbeddedRedis(tmp_path)
    first.start()
    try:
        # As after a SIGKILL of the service: only the server process holds the lock now.
        first._lock_file.close()
        with pytest.raises(EmbeddedRedisError, match="orphaned redis-server"):
            EmbeddedRedis(tmp_path).start()
    finally:
        first.stop()
    restarted = EmbeddedRedis(tmp_path)
    restarted.start()
    restarted.stop()
