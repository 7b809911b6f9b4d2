"""Result-backend cause: write/read latency, row-lock waits, a contention experiment on scratch
tables. ``probe`` is the doctor probe; ``db``, ``redis``, ``contention``, ``scratch`` measure."""
