"""A toy model with two parts, for trainer tests: a GAN-like two-optimizer stage, a stage
that trains one part only, optional NaN injection and a per-step sleep from $TOY_SLEEP (for kill tests)."""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

import zoo


class ToyConfig(zoo.ZooConfig):
    steps: int = Field(40, description="steps per stage")
    batch_size: int = Field(8, description="global batch")
    nan_at_step: int | None = Field(None, description="make the loss NaN from this step on")
    ema_decay: float | None = Field(None, description="EMA of weights in the first stage")
    patience: int | None = Field(None, description="early stopping patience of the first stage")
    dropout: float = Field(0.0, description="dropout in the generator (exercises the RNG state)")


class ToyOptions(zoo.SampleOptionsBase):
    n: int = 4


class Points(Dataset):
    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(count, 4, generator=generator)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class Toy(nn.Module):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.Dropout(config.dropout), nn.ReLU(), nn.Linear(16, 1))
        self.critic = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))


def make_loss(config: ToyConfig):
    def loss(model: Toy, batch: dict, ctx: zoo.StepContext) -> dict:
        time.sleep(float(os.environ.get("TOY_SLEEP", "0")))  # outside the config: a resume must not differ
        prediction = model.generator(batch["x"])
        ctx.cache["prediction"] = prediction
        mse = F.mse_loss(prediction, batch["y"])
        if config.nan_at_step is not None and ctx.step >= config.nan_at_step:
            mse = mse * float("nan")
        return {"loss": mse, "mse": mse}

    return loss


def critic_loss(model: Toy, batch: dict, ctx: zoo.StepContext) -> dict:
    real = model.critic(batch["y"])
    fake = model.critic(ctx.cache["prediction"].detach())
    loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return {"loss": loss}


class ToyPlugin(zoo.ModelPlugin):
    name = "toy"
    description = "toy regression with a critic"
    Config = ToyConfig
    SampleOptions = ToyOptions
    runtime = "tests.core.toy_plugin:NoRuntime"

    def build(self, config: ToyConfig) -> nn.Module:
        return Toy(config)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [model.generator, model.critic]  # the critic runs twice in a loss (real, fake)

    def stages(self, config: ToyConfig) -> list[zoo.Stage]:
        data = lambda ctx: Points(64, 0)  # noqa: E731
        validation = (
            zoo.Validation(lambda ctx: Points(32, 1), every=5, patience=config.patience) if config.patience else None
        )
        return [
            zoo.Stage(
                "regress",
                [zoo.Optimizer("generator", lambda m: [m.generator], make_loss(config), lr=3e-2)],
                config.steps,
                config.batch_size,
                data,
                ema_decay=config.ema_decay,
                validation=validation,
            ),
            zoo.Stage(
                "adversarial",
                [
                    zoo.Optimizer("generator", lambda m: [m.generator], make_loss(config), lr=1e-3, clip_grad_norm=1.0),
                    zoo.Optimizer("critic", lambda m: [m.critic], critic_loss, lr=1e-3, start_step=5, every=2),
                ],
                config.steps,
                config.batch_size,
                data,
            ),
            zoo.Stage(
                "critic_only",
                [zoo.Optimizer("critic", lambda m: [m.critic], critic_loss_only, lr=1e-2)],
                config.steps,
                config.batch_size,
                data,
            ),
        ]


def critic_loss_only(model: Toy, batch: dict, ctx: zoo.StepContext) -> dict:
    ctx.cache["prediction"] = model.generator(batch["x"])
    return critic_loss(model, batch, ctx)
