"""Training: data-parallel SGD of the `rsim_jax.models` with Orbax checkpoints and JSONL metrics (optionally
TensorBoard too: `TrainConfig(tensorboard=True)`, the `tensorboard` extra).

    from rsim_jax.train import TrainConfig, train, load_model, load_config
    config = load_config("experiments/train_configs/resnet_digits.py:local")
    final = train(config, "runs/r20")                 # -> {"test_accuracy": ..., "step": ..., ...}
    model, config = load_model("runs/r20")            # eval-mode NNX model with the trained weights

or from a shell: `python -m rsim_jax.train --config FILE[:VARIANT] --workdir DIR [--set field=value ...]`.
"""

from rsim_jax.train.checkpoint import Checkpointer
from rsim_jax.train.config import TrainConfig, load_config, parse_override
from rsim_jax.train.loop import (Program, build_model, checkpoint_steps, evaluate, load_initial_model, load_model,
                                 train)
from rsim_jax.train.metrics import read_metrics
from rsim_jax.train.optim import cross_entropy, learning_rate_schedule, make_optimizer
from rsim_jax.train.state import TrainState

__all__ = [
    "Checkpointer", "Program", "TrainConfig", "TrainState", "build_model", "checkpoint_steps", "cross_entropy", "evaluate",
    "learning_rate_schedule", "load_config", "load_initial_model", "load_model", "make_optimizer", "parse_override", "read_metrics", "train",
]
