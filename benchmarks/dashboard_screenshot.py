"""Screenshots of the Ray dashboard during a small attribution job, for docs/monitoring.md.

Starts, in this process, a local Ray with its dashboard on 127.0.0.1:8265, the
service with a private Redis on a loopback port, trains a tiny digits run and
runs one job through the client. While the job's replay workers are alive it
takes screenshots of the dashboard's pages with headless Chromium
(/usr/bin/chromium, Debian's package) into docs/img/. Everything it starts
listens on loopback only and stops at the end.

    python benchmarks/dashboard_screenshot.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import workers  # noqa: E402,F401  (loopback defaults before ray is imported)

DASHBOARD = "http://127.0.0.1:8265"
# Output file: (page, window height in pixels).
PAGES = {"ray-dashboard.png": ("/#/overview", 900),
         "ray-dashboard-actors.png": ("/#/actors", 900)}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic",
                  "--hide-scrollbars", "--virtual-time-budget=15000"]


def screenshot(url: str, output: Path, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["/usr/bin/chromium", *CHROMIUM_FLAGS, f"--window-size=1400,{height}",
                        f"--user-data-dir={profile}", f"--screenshot={output}", url],
                       check=True, timeout=120, capture_output=True)
    print(f"wrote {output}")


def wait_for_dashboard(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{DASHBOARD}/api/gcs_healthz", timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def print_task_names() -> None:
    """Print the names of the Ray tasks and actor calls, as the dashboard lists them."""
    from ray.util.state import list_tasks

    for name in sorted({task.name for task in list_tasks(address=DASHBOARD, limit=1000)}):
        print(f"task {name}")


def print_ray_metrics() -> None:
    """Print the project's metrics as this node's Prometheus endpoint exports them."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if "magic" in line and not line.startswith("#"):
            print(line)


def main() -> None:
    import ray

    from client import AttributionClient
    from service.app import create_app
    from service.server import BackgroundServer
    from service.settings import Settings

    images = ROOT / "docs" / "img"
    with tempfile.TemporaryDirectory() as storage:
        ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=True,
                 dashboard_host="127.0.0.1", dashboard_port=8265, log_to_driver=False)
        server = None
        try:
            wait_for_dashboard()
            settings = Settings(storage_dir=Path(storage), shard_size=8, replay_batch_size=2,
                                replay_workers=2, smoothness_probe=False)
            server = BackgroundServer(create_app(settings))
            url = server.start()
            with AttributionClient(url) as client:
                run = client.create_run("digits-mlp", {"n_train": 300, "n_test": 60,
                                                       "epochs": 4, "hidden": [32]},
                                        wait=True, timeout=300)
                job_id = client.submit_job(run["run_id"], list(range(16)))
                client.wait(job_id, timeout=300, progress=False)
                print(f"job {job_id} succeeded; its replay workers stay warm")
                # Let the dashboard's node and actor tables refresh.
                time.sleep(5)
                for name, (page, height) in PAGES.items():
                    screenshot(DASHBOARD + page, images / name, height)
                print_task_names()
                # Give Ray's metrics agent time for its next report.
                time.sleep(15)
                print_ray_metrics()
        finally:
            if server is not None:
                server.stop()
            ray.shutdown()


if __name__ == "__main__":
    main()
