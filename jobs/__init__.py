"""Ray Jobs entry points (``ray job submit -- python -m jobs.<name> ...``)."""
