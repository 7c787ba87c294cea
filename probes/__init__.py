"""Diagnostics on PauseRec checkpoints; each module runs as ``python -m probes.<name> CKPT ... --out
DIR``."""
