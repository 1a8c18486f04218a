"""Everything that imports ray: training tasks, replay workers, job coordinators, metrics.

Ray 2.60 reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when ``ray`` is first
imported, so the loopback defaults of a local Ray are set here, before any
submodule imports ray. They apply only when no ``RAY_ADDRESS`` is configured
and never replace a value already in the environment.
"""

import os

if not (os.environ.get("RAY_ADDRESS") or os.environ.get("MAGIC_RAY_ADDRESS")):
    # NOTE: a RAY_ADDRESS passed to Settings() directly, not through the environment,
    # still gets these loopback defaults; pass it through the environment instead.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
