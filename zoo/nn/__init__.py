"""Layers shared by plugins: quantisers, taming-style blocks, masked convolutions, GAN parts,
attention with one key/value cache layout (`attention`), the feed-forward and stochastic depth (`layers`)."""
