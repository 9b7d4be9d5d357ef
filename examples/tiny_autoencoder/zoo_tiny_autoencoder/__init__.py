"""Example zoo plugin: a tiny vector-quantised autoencoder on the embedded digits."""
