"""CIFAR ResNets (He et al. 2016) as trained by Nguyen, Raghu & Kornblith 2021.

  python -m rsim_jax.train --config experiments/train_configs/resnet_digits.py:local --workdir runs/r20_digits
  python -m rsim_jax.train --config experiments/train_configs/resnet_digits.py:cifar10 --workdir runs/r56_cifar10

Variants
  local    ResNet-20 ×1 on scikit-learn digits (8×8), ~1 min on a laptop CPU; ≥ 95% test accuracy.
  cifar10  ResNet-56 ×1 on CIFAR-10, the paper's recipe: SGD momentum 0.9, lr 0.1, batch 128, weight decay 5e-4,
           300 epochs with ×0.1 steps at 50% and 75%, random crop + flip (an accelerator job).
  cifar10_small  ResNet-20 on 2,500 CIFAR-10 images without augmentation: fits the training set on a CPU in
           minutes (experiments/wide_deep/RESULTS.md: the block structure needs models that fit their data).
These single runs zero-initialise the last BatchNorm scale of each block for quick, stable training; that
suppresses the block structure, so the wide/deep study's variants use the standard initialisation instead.
"""

from rsim_jax.train import TrainConfig


def get_config(variant: str = "local") -> TrainConfig:
  if variant == "local":
    return TrainConfig(model="resnet", model_kwargs={"depth": 20, "width": 1, "zero_init_last_bn": True},
                       data="digits", batch_size=64, eval_batch_size=128, num_epochs=15, lr=0.1,
                       warmup_epochs=1, weight_decay=5e-4, augment=False)
  if variant == "cifar10":
    return TrainConfig(model="resnet", model_kwargs={"depth": 56, "width": 1}, data="cifar10", batch_size=128,
                       eval_batch_size=1000, num_epochs=300, lr=0.1, schedule="step", step_boundaries=(0.5, 0.75),
                       weight_decay=5e-4, augment=True, checkpoint_every_steps=None)
  if variant == "cifar10_small":
    return TrainConfig(model="resnet", model_kwargs={"depth": 20, "width": 1, "zero_init_last_bn": True},
                       data="cifar10", train_subset=2500, batch_size=128, eval_batch_size=500, num_epochs=40,
                       lr=0.1, warmup_epochs=1, weight_decay=5e-4, augment=False)
  raise ValueError(f"Unknown variant {variant!r}; choose local, cifar10 or cifar10_small.")
