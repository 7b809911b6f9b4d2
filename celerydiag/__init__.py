"""celerydiag: why does my Celery task's state show up late?

Measures each known cause (broker, result backend, network, serialization, polling) on the
user's real systems, ranks them by the milliseconds they add, and prints the fix.
"""

__version__ = "0.1.0"
