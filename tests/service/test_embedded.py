"""The embedded Redis server: storage folder locking."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from service.embedded import EmbeddedRedis, EmbeddedRedisError


def test_second_server_on_same_folder_rejected(tmp_path):
    first = EmbeddedRedis(tmp_path)
    first.start()
    try:
        with pytest.raises(EmbeddedRedisError, match="another service"):
            EmbeddedRedis(tmp_path).start()
    finally:
        first.stop()


def test_live_service_keeps_folder_locked(tmp_path):
    first = EmbeddedRedis(tmp_path)
    first.start()
    try:
        # Only the server process holds the lock now, but the service that started
        # it (this process) is alive, so the server is not an orphan.
        first._lock_file.close()
        with pytest.raises(EmbeddedRedisError, match="another service"):
            EmbeddedRedis(tmp_path).start()
    finally:
        first.stop()
    restarted = EmbeddedRedis(tmp_path)
    restarted.start()
    restarted.stop()


def test_orphaned_server_is_replaced(tmp_path):
    # A separate service process starts the server, writes a key and is killed.
    script = (
        "import sys, redis\n"
        "from service.embedded import EmbeddedRedis\n"
        "server = EmbeddedRedis(sys.argv[1])\n"
        "url = server.start()\n"
        "redis.Redis.from_url(url).set('kept', 'yes')\n"
        "print(server._process.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    service = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               cwd=Path(__file__).resolve().parents[2])
    orphan = int(service.stdout.readline())
    service.send_signal(signal.SIGKILL)
    service.wait(timeout=30)
    assert Path(f"/proc/{orphan}").exists(), "the server should outlive its service"

    restarted = EmbeddedRedis(tmp_path)
    try:
        url = restarted.start()
        assert redis.Redis.from_url(url).get("kept") == b"yes"
        deadline = time.monotonic() + 15
        while Path(f"/proc/{orphan}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{orphan}").exists(), "the orphaned server is still running"
    finally:
        restarted.stop()
        if Path(f"/proc/{orphan}").exists():  # the takeover failed: stop it here
            os.kill(orphan, signal.SIGTERM)
