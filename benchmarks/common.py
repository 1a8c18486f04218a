"""Helpers shared by the benchmark scripts: hardware description and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def hardware() -> dict:
    """Describe the machine a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def save(name: str, payload: dict) -> Path:
    """Write ``payload`` with the hardware and a timestamp to results/NAME.json."""
    RESULTS.mkdir(exist_ok=True)
    payload = {"hardware": hardware(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
               **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    return path


def median(values: list[float]) -> float:
    return float(statistics.median(values))
