"""The papers' distribution metrics: FID, Inception Score, KID, precision/recall and
reconstruction FID, computed with torch-fidelity's Inception network and its functions.

zoo draws the samples (resumable, class-balanced, kept as PNG files), reads the reference
(a folder, shards, a built-in set, an ADM reference-batch `.npz`, or a torch-fidelity
feature cache), extracts features in batches and caches the reference's; the figures
themselves are torch-fidelity's (`fid_statistics_to_metric`, `isc_features_to_metric`,
`kid_features_to_metric`, `prc_features_to_metric`), so they equal `calculate_metrics`.

torch-fidelity (and the torchvision it imports) is the `metrics` extra, imported only when
features are extracted (`zoo.metrics.fidelity`). Modules:

- `weights`: which Inception weights file, and its sha256 check;
- `adm`: the ADM reference-batch `.npz` format;
- `references`: what `--ref` names, as batches of uint8 images or as statistics;
- `samples`: drawing the sample set into a folder, resumable;
- `fidelity`: features and the figures, through torch-fidelity;
- `evaluate`: the whole evaluation of a run or an export;
- `validation`: the metrics at a stage's validations during training (the config's `validation`).
"""

# What each logged validation metric was measured on (N, reference, weights' sha256), per key,
# in the run directory; `zoo report` shows it beside the curves.
MEASURED_ON_FILE = "validation_metrics.json"
