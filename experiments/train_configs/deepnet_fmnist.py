"""The conv DeepNet on Fashion-MNIST for the dimensionality study (Recanatesi et al. 2019).

  python -m rsim_jax.train --config experiments/train_configs/deepnet_fmnist.py:local --workdir runs/deepnet

Variants
  local  a small DeepNet (conv 16, 32; dense 128) on 6,000 Fashion-MNIST training images, a few minutes on a CPU.
  paper  conv 32, 64; dense 256, 128 on all 60,000 images, plain SGD (momentum 0.9, lr 0.01, batch 64), 30 epochs.
"""

from rsim_jax.train import TrainConfig


def get_config(variant: str = "local") -> TrainConfig:
  if variant == "local":
    return TrainConfig(model="deepnet", model_kwargs={"conv_features": (16, 32), "dense_features": (128,)},
                       data="fashion_mnist", train_subset=6000, batch_size=128, eval_batch_size=500, num_epochs=10,
                       lr=0.05, schedule="cosine", weight_decay=1e-4)
  if variant == "paper":
    return TrainConfig(model="deepnet", model_kwargs={"conv_features": (32, 64), "dense_features": (256, 128)},
                       data="fashion_mnist", batch_size=64, eval_batch_size=1000, num_epochs=30, lr=0.01,
                       schedule="constant", weight_decay=0.0)
  raise ValueError(f"Unknown variant {variant!r}; choose local or paper.")
