"""adaLN-modulated RMSNorm (LightningDiT, with weight) and LayerNorm (DiT/SiT, no affine): reference.py,
kernel.py (Triton forward + backward), spec.py (paper shapes, bytes, flops, launches)."""
