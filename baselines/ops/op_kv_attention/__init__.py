"""Single-query attention over a KV cache (flash-decoding, for the flows' sequential sampling):
reference.py, kernel.py, spec.py."""
