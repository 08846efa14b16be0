"""The flows' affine step with its log-determinant (TARFlow exp, STARFlow softplus) and its inverse:
reference.py, kernel.py, spec.py."""
