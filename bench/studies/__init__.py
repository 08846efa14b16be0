"""One-off studies built on the harness (each behind an invoke task): `jacobi` (sequential vs block-wise Jacobi
decoding of the flows) and `sizes` (parameter counts of the flow presets)."""
