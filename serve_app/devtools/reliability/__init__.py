"""The reliability suite: the local stack with its faults at hand, an open-loop load generator,
fault scenarios, hostile-input fuzzing and soak runs (``specrag reliability``, ``bench load``)."""
