"""``make native``: compile the capture hot path with mypyc, in place, next to the sources.

Optional and opt-in: ``capture --read`` works the same without it (pure Python, the default on a
fresh clone). With it, Python's import system picks the compiled ``.so`` of each module over its
``.py`` (extension modules come first on the same path), so nothing else changes: no source edit,
no flag, the same output (``bench/capture_vs_tshark.py --native`` compares it byte for byte).
Why: compiled, the per-packet code runs about 1.3x faster, what it takes to be 3x tshark -2 on a
shared machine (issue 13 point 4). ``make clean-native`` removes the build; a compiled module older
than its source is reported by ``stale_native_modules()`` (and fails tests/unit/test_capture_native.py)
so an edit is never silently shadowed by an old build.

The shared runtime library goes inside the package (``group_name``), not at the top level, so an
editable install (whose import hook maps only ``celerydiag``) finds it too.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from celerydiag.network.capture.native import GROUP, HOT_MODULES, PACKAGE_DIR  # noqa: E402


def main() -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution

    os.chdir(ROOT)
    paths = [os.path.relpath(os.path.join(PACKAGE_DIR, f"{m}.py"), ROOT) for m in HOT_MODULES]
    # A bare Distribution, not setup(): setup() would also read the project's pyproject.toml,
    # whose metadata is pip's business, not this build's.
    dist = Distribution({"name": "celerydiag-capture-native",
                         "ext_modules": mypycify(paths, group_name=GROUP, opt_level="3"),
                         "script_args": ["build_ext", "--inplace", "--build-temp", os.path.join("build", "native")]})
    dist.parse_command_line()
    dist.run_commands()
    # setuptools copies the built files with their old times when it found them up to date: stamp
    # them now, the time native.stale_native_modules() compares with the sources'
    for name in os.listdir(PACKAGE_DIR):
        if name.endswith((".so", ".pyd")):
            os.utime(os.path.join(PACKAGE_DIR, name))


if __name__ == "__main__":
    main()
