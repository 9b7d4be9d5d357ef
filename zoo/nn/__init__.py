"""Layers shared by plugins: quantisers, taming-style blocks, masked convolutions, GAN parts."""
