"""The parts of the speed benchmark (``python -m benchmarks.speed``, in ``benchmarks/speed.py``).

``settings`` (rows, implementations, dtypes), ``machine`` (CPU, versions, matmul peaks),
``prepare`` (models and batches, once), ``worker`` (one row of one implementation, in its own
process), ``training`` / ``inference`` (what a worker times), ``timing``, ``flops`` and
``memory`` (how it measures), ``report`` (the summary and the table).
"""
