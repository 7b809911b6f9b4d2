"""Host cause: the Celery worker processes on this machine (psutil), their pool and concurrency,
and whether they get a CPU when a state update is due. ``probe`` is the doctor probe; ``workers``
finds and parses the worker processes, ``window`` samples CPU, run-queue wait and swap."""
