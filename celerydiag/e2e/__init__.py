"""End-to-end: a real worker's update_state() to a client seeing it (``probe``)."""
