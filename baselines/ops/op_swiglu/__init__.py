"""SwiGLU gate SiLU(h[..., :H]) * h[..., H:] (LightningDiT's `w12` layout): reference.py, kernel.py, spec.py."""
