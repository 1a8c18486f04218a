"""Inject each fault of tests/integration/test_faults.py several times and count outcomes.

Usage: python benchmarks/fault_report.py [--repeats 3]

Runs the fault tests with MAGIC_FAULT_REPEATS set and reads pytest's JUnit XML.
For each fault it writes to benchmarks/results/faults.json how many jobs were
hit, how many ended succeeded with every score vector equal to the engine's
scores on the same run, and the failure messages of the others. A passing test
checks that the job succeeded, that its scores equal the engine's, and that
the cache contains exactly one readable vector per test sample.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

from common import save

ROOT = Path(__file__).resolve().parents[1]
FAULTS = {
    "test_replay_worker_killed_mid_shard": "replay worker process SIGKILLed mid-shard",
    "test_redis_killed_and_restarted_mid_job": "redis-server SIGKILLed mid-job, restarted "
                                               "1.5 s later",
    "test_api_process_killed_mid_job": "API process (magic-attr serve) SIGKILLed mid-job, "
                                       "a new one started",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "faults.xml"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/integration/test_faults.py", f"--junitxml={report}"],
                       cwd=ROOT, env={**os.environ, "MAGIC_FAULT_REPEATS": str(args.repeats)},
                       check=False)
        seconds = time.perf_counter() - started
        cases = ElementTree.parse(report).getroot().iter("testcase")
        outcomes: dict[str, dict] = defaultdict(lambda: {"injected": 0, "complete": 0,
                                                         "failures": []})
        for case in cases:
            name = case.get("name").split("[")[0]
            row = outcomes[name]
            row["injected"] += 1
            # An Element without children is falsy, so compare with None explicitly.
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            if problem is None and case.find("skipped") is None:
                row["complete"] += 1
            elif problem is not None:
                row["failures"].append((problem.get("message") or "")[:300])
    rows = [{"fault": FAULTS.get(name, name), "test": name, **row}
            for name, row in outcomes.items()]
    for row in rows:
        print(f"{row['fault']}: {row['complete']}/{row['injected']} complete", flush=True)
    save("faults", {"repeats": args.repeats, "seconds": seconds, "faults": rows})


if __name__ == "__main__":
    main()
