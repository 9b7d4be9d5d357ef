"""VQ-VAE-2 (Razavi et al., 2019) with gated PixelCNN priors as a zoo plugin: see plugin.py; config.py and runtime.py import no torch."""
