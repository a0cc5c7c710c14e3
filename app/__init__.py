"""orderhook: a webhook receiver and relay gateway for VTEX order notifications."""

import os

__version__ = "0.1.0"

# PROMETHEUS_MULTIPROC_DIR is the gateway's own: `serve --workers N` makes a fresh folder and
# names it in both variables for its workers (app/cli.py). One the environment brought any other
# way (another program's, a crashed run's) would have this process count into a folder it does
# not own, or fail at import when it is gone: dropped here, before prometheus_client reads it.
METRICS_DIR_VARIABLE = "ORDERHOOK_METRICS_DIR"
if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != os.environ.get(METRICS_DIR_VARIABLE):
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
