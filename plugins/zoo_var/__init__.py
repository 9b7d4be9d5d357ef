"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., NeurIPS 2024)."""
