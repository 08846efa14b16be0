"""genbench models: uniform wrappers (api.py), faithful architectures (one file each), fused ops (ops/)."""
