"""QuantArt (Huang et al., CVPR 2023) as a zoo plugin: see plugin.py; config.py and runtime.py import no torch."""
