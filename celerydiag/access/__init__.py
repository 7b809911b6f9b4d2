"""What Celery talks to, reached the way Celery does: reachability checks (reach.py), read-only
access to the user's result backend (backend.py: URL, engine, task table, Redis client), and
apps of our own on the target's services (app.py). Shared by every probe and command."""
