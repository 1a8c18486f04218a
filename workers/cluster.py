"""Start a local Ray or join a cluster, and stop it again.

With no ``RAY_ADDRESS`` a private single-node Ray starts on loopback: Ray 2.60
binds the machine's address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is
set when ray is imported (``workers/__init__.py`` sets it), and it turns token
authentication on unless ``RAY_AUTH_MODE=disabled``. ``ray.init`` replaces the
process's SIGTERM handler, so the caller's handler (uvicorn's, for a clean
shutdown) is restored afterwards.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

def start_ray(settings: "Settings") -> bool:
    """Connect to ``settings.ray_address`` or start a local Ray; return True if started here.

    Does nothing and returns False when this process is already connected, as in
    tests that share one Ray between several services.
    """
    if ray.is_initialized():
        logger.info("reusing the Ray this process is already connected to")
        return False

    started = time.perf_counter()
    previous_handler = signal.getsignal(signal.SIGTERM)
    try:
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(
                num_cpus=settings.ray_num_cpus,
                object_store_memory=settings.ray_object_store_mb * 1024 * 1024,
                include_dashboard=settings.ray_dashboard,
                log_to_driver=False,
            )
            _require_loopback()
    finally:
        _restore_sigterm(previous_handler)
    where = settings.ray_address or "a local Ray on loopback"
    logger.info("connected to %s in %.1f s", where, time.perf_counter() - started)
    return True


def stop_ray() -> None:
    """Disconnect from Ray; a local Ray started by ``start_ray`` stops with it."""
    if ray.is_initialized():
        ray.shutdown()
        logger.info("Ray shut down")


def ray_health() -> dict:
    """Return whether Ray is connected, with its CPU and GPU totals."""
    if not ray.is_initialized():
        return {"ok": False, "error": "not connected"}
    try:
        resources = ray.cluster_resources()
    except Exception as error:  # noqa: BLE001 - the health route reports any failure
        return {"ok": False, "error": str(error)}
    return {"ok": True, "cpus": resources.get("CPU", 0.0), "gpus": resources.get("GPU", 0.0)}


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0.0) >= 1


def replay_worker_resources(settings: "Settings") -> dict:
    """Return the Ray resource options of one replay worker.

    On a cluster with GPUs a worker reserves ``MAGIC_REPLAY_WORKER_GPUS`` GPUs
    and ``MAGIC_REPLAY_WORKER_CPUS`` CPUs, elsewhere only the CPUs.
    """
    if cluster_has_gpus():
        return {"num_cpus": settings.replay_worker_cpus, "num_gpus": settings.replay_worker_gpus}
    return {"num_cpus": settings.replay_worker_cpus}


def training_resources(settings: "Settings") -> dict:
    """Return the Ray resource options of one training or retraining task."""
    return {"num_cpus": settings.train_task_cpus}


def _require_loopback() -> None:
    """Stop the local Ray and raise if it bound an address other than loopback."""
    address = ray.util.get_node_ip_address()
    if ipaddress.ip_address(address).is_loopback:
        return
    ray.shutdown()
    raise RuntimeError(
        f"the local Ray bound {address}, not loopback, because ray was imported before "
        "the workers package set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; import workers "
        "first or export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
    )


def _restore_sigterm(handler) -> None:
    # signal.signal raises ValueError outside the main thread, where the handler
    # stays as ray.init left it.
    if handler is None:
        return
    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:
        pass
