"""Rotary embedding on interleaved pairs (LightningDiT 2D RoPE, STARFlow): reference.py, kernel.py, spec.py."""
