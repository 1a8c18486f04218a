"""A tqdm progress bar over a job's finished test samples."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm


class JobProgress:
    """Shows ``done/total`` test samples of one job; does nothing when disabled."""

    def __init__(self, job_id: str, enabled: bool = True) -> None:
        self.job_id = job_id
        self.enabled = enabled
        self._bar = None

    def __enter__(self) -> "JobProgress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._bar is not None:
            self._bar.close()

    def update(self, job: dict) -> None:
        if not self.enabled:
            return
        done, total = job["progress"]["done"], job["progress"]["total"]
        if self._bar is None:
            self._bar = tqdm(total=total, desc=f"job {self.job_id[:8]}", unit="sample")
        self._bar.set_postfix_str(f"{job['status']}, {job['cached']} cached", refresh=False)
        self._bar.update(done - self._bar.n)
