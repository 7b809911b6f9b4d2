"""Diagnosis-accuracy scenarios (issue 8): inject one cause for real, check the doctor names it first.

See ``tests/scenarios/harness.py`` for the definition of "top-ranked cause" and how results are
recorded for ``bench/accuracy.py``.
"""
