"""Learning-rate schedules, the SGD optimizer and the classification loss (optax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rsim_jax.train.config import TrainConfig


def learning_rate_schedule(config: TrainConfig, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """η(t) for step t = 0, 1, ...: linear warm-up 0 → `lr` over `warmup_steps`, then

    cosine    η = lr·(f + (1 − f)·½(1 + cos(π·τ))),   τ = (t − warmup)/(total − warmup) ∈ [0, 1], f = end_lr_fraction
    step      η = lr · step_factor^(number of boundaries·total passed)
    constant  η = lr

  and held at its final value after `total_steps` (`until_zero_train_error` trains past the horizon).
  """
  decay_steps = max(total_steps - warmup_steps, 1)
  lr = config.lr
  if config.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=config.end_lr_fraction)
  elif config.schedule == "step":
    boundaries: dict[int, float] = {}
    for b in config.step_boundaries:  # step counts of the main schedule (it starts after the warm-up)
      at = max(int(round(b * total_steps)) - warmup_steps, 1)
      boundaries[at] = boundaries.get(at, 1.0) * config.step_factor  # boundaries that round together compound
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    main = optax.constant_schedule(lr)
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def weight_decay_mask(params):
  """Pytree of bools shaped like `params` (a pure dict of an NNX model): True for the leaves named `kernel`.

  In `rsim_jax.models` those are exactly the conv kernels `(kh, kw, c_in, c_out)` and dense kernels
  `(c_in, c_out)`; BatchNorm `scale`/`bias` and conv/dense `bias` are False (`weight_decay_on="kernels"`).
  """
  def is_kernel(path, _):
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None)) == "kernel"

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(config: TrainConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum and weight decay λ:

    coupled (L2, PyTorch `SGD(weight_decay=λ)`):  g ← g + λθ;  m ← μm + g;  θ ← θ − η_t m
    decoupled (SGDW):                             m ← μm + g;  θ ← θ − η_t (m + λθ)

  on every parameter θ (`weight_decay_on="all"`) or on the kernels only ("kernels": the λθ term is masked by
  `weight_decay_mask`, the other parameters get plain momentum SGD).
  """
  momentum = optax.trace(decay=config.momentum, nesterov=config.nesterov) if config.momentum else optax.identity()
  if not config.weight_decay:
    decay = optax.identity()
  elif config.weight_decay_on == "kernels":
    decay = optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask)
  else:  # "all": unmasked, as the recorded runs were trained (their checkpoints hold this optimizer state)
    decay = optax.add_decayed_weights(config.weight_decay)
  parts = [momentum, decay] if config.decoupled_weight_decay else [decay, momentum]
  return optax.chain(*parts, optax.scale_by_learning_rate(schedule))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy `(b,)` in float32 against integer `labels`, with optional label
  smoothing (Szegedy et al. 2016: targets (1 − ε)·onehot + ε/K)."""
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)
