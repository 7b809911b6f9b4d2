"""`celerydiag --help` (and each command's) must stay instant: no Celery, no drivers, no scapy.

Heavy imports belong inside the functions that need them (style-anchors C). These tests run in a
fresh interpreter, since the test process itself has imported everything long ago.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from celerydiag.cli import COMMAND_MODULES

HEAVY = ("scapy", "sqlalchemy", "celery", "kombu", "amqp", "redis", "psycopg", "pymysql", "numpy",
         "psutil", "rich", "msgpack")

WRAPPER = """
import json, sys
from celerydiag.cli import main
try:
    main(sys.argv[1:])
finally:
    heavy = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.stdin.read())))
    sys.__stderr__.write('HEAVY=' + json.dumps(heavy) + '\\n')
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PYTHONPROFILE"))}


def heavy_modules_after(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], input=json.dumps(HEAVY), env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("HEAVY=")][-1]
    return json.loads(line.split("=", 1)[1])


COMMANDS = [m.rsplit(".", 1)[1].replace("_", "-") for m in COMMAND_MODULES]


@pytest.mark.parametrize("args", [("--help",), ("--version",), *[(c, "--help") for c in COMMANDS]],
                         ids=lambda a: " ".join(a))
def test_help_imports_nothing_heavy(args):
    assert heavy_modules_after(*args) == []


def test_the_console_script_help_imports_nothing_heavy(cli_argv):
    """The real entry point, measured by Python itself (-X importtime via the environment)."""
    proc = subprocess.run([*cli_argv, "--help"], env={**_env(), "PYTHONPROFILEIMPORTTIME": "1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "celerydiag" in imported  # the profile really ran
    assert sorted(imported & set(HEAVY)) == []


def test_the_detector_sees_heavy_imports_when_a_command_really_runs(tmp_path):
    """Control: a real run does import Celery, so an empty list above means something."""
    assert "celery" in heavy_modules_after("doctor", "--static", "--format", "json",
                                           "--output", str(tmp_path / "r.json"))
