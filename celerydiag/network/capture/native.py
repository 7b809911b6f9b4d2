"""Which capture modules run compiled (``make native``, mypyc) and whether a build is stale.

The compiled build is optional: without it every module is plain Python. With it, each hot
module's ``.so`` sits beside its ``.py`` and wins the import. A ``.so`` older than its ``.py``
means the source was edited after the build: the old code would run, so it is reported (tests fail
on it) rather than silently used.
"""

from __future__ import annotations

import glob
import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
HOT_MODULES = ("decode", "tcp", "stream", "amqp", "reader", "analysis")  # resp.py: mypyc cannot subclass bytes
GROUP = "celerydiag.network.capture._native"  # the shared mypyc runtime library, inside this package


def _compiled(module: str) -> list[str]:
    return [path for ext in ("so", "pyd") for path in glob.glob(os.path.join(PACKAGE_DIR, f"{module}.*.{ext}"))]


def native_modules() -> list[str]:
    """The hot modules that have a compiled build next to their source."""
    return [m for m in HOT_MODULES if _compiled(m)]


def stale_native_modules() -> list[str]:
    """Compiled modules whose source changed after the build (``make native`` again, or
    ``make clean-native``). The code itself is in the group's shared library (each module's own
    ``.so`` is a small shim that setuptools may leave untouched), so the build time is the oldest
    of the module's files and that library."""
    shared = [path for ext in ("so", "pyd")
              for path in glob.glob(os.path.join(PACKAGE_DIR, f"{GROUP.rsplit('.', 1)[1]}__mypyc.*.{ext}"))]
    stale = []
    for m in HOT_MODULES:
        built = _compiled(m)
        if not built:
            continue
        src = os.path.join(PACKAGE_DIR, f"{m}.py")
        if min(os.path.getmtime(path) for path in built + shared) < os.path.getmtime(src):
            stale.append(m)
    return stale
