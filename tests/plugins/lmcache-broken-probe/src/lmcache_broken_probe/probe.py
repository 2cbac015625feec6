"""A probe that raises: stands for a vendor probe crashing on a half-installed driver.

The core must log the failure with this reason, report it in ``discover_backends()`` and in
``lmcache-core info``, and go on without this backend.
"""

from __future__ import annotations

#: Text of the error the probe raises; tests look for it in logs and reports.
MESSAGE = "simulated probe crash (lmcache-broken-probe test plugin)"


def probe() -> object:
    raise RuntimeError(MESSAGE)
