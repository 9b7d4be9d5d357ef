"""The one trainer: runs any plugin's stages, with checkpoints, resume, data parallelism
(zoo.distributed), the levers of zoo.scale, and progress.

Determinism: the seed fixes initialisation, the data order (a per-epoch permutation
derived from the seed, addressed by step, so a resumed run sees the same batches) and
every random draw inside the loss functions (the torch RNG state is checkpointed).

One job per module: `loop` (the Trainer: stages, steps, validation, EMA, logging, grids),
`options` (TrainOptions), `batches` (the stage loader over zoo.data.loader's seeded sampler, micro-batches),
`optimizers` (trained parameters, weight decay, lr schedule, freezing), `state` (a stage's
state), `run_record` (config.json: one run per directory, sessions, finished stages),
`resume` (initial weights, checkpoints, continuing a stage).
"""

from zoo.trainer.batches import (
    GlobalBatchSampler as GlobalBatchSampler,
    split_batch as split_batch,
    stage_loader as stage_loader,
    to_device as to_device,
)
from zoo.trainer.loop import Trainer as Trainer, train as train
from zoo.trainer.optimizers import (
    build_optimizer as build_optimizer,
    freeze_all_but as freeze_all_but,
    lr_factor as lr_factor,
    named_trained_parameters as named_trained_parameters,
    trained_parameters as trained_parameters,
)
from zoo.trainer.options import TrainOptions as TrainOptions
from zoo.trainer.state import (
    MetricsWindow as MetricsWindow,
    StageState as StageState,
    ValidationState as ValidationState,
)
