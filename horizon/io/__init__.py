"""Files horizon reads and writes: the run store (``runs``)."""
