"""`celerydiag watch`: the state-latency SLI measured continuously.

Every interval a canary task on a queue of its own measures what a client sees (the e2e probe's
method at a monitor's scale: :mod:`celerydiag.watch.canary`), and passive readers take the other
signals without writing anything (:mod:`celerydiag.watch.signals`). One :class:`~celerydiag.watch.
sample.Sample` per interval goes to the sinks: the Prometheus registry (:mod:`.metrics`), the
terminal view or JSON lines (:mod:`.view`). :mod:`.loop` schedules it, survives faults and cleans
up on Ctrl-C/SIGTERM.
"""
