"""multimodal_caption: an image autoencoder and a captioner sharing one latent (see model.py)."""
