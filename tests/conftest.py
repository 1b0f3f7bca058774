"""Shared test set-up: a local, quiet, offline environment for every test process."""

from __future__ import annotations

import os

from serve_app.devtools.local_stack import LOCAL_RAY_ENV

for key, value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(key, value)
