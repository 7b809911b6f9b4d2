"""Read-only access to what Celery talks to: reachability checks, driver timeouts, the user's
result backend (engine, task table, Redis client). Shared by every probe and command that reads it."""
