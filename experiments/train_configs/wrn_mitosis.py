"""Wide ResNets trained to zero training error, for the representation-mitosis study (Doimo et al. 2021).

  python -m rsim_jax.train --config experiments/train_configs/wrn_mitosis.py:local --workdir runs/wrn_digits

Variants
  local    WRN-10-4 (last hidden layer 256 units) on digits, trained until the training error is 0.
  cifar10  WRN-28-8 (last hidden layer 512) on CIFAR-10: SGD momentum 0.9, lr 0.1 with cosine decay to 1% over
           200 epochs, weight decay 5e-4, crop + flip, then on at lr 0.001 until zero training error (≤ 300
           epochs). Vary `widen_factor` (1, 2, 4, 8, 16) with `--set 'model_kwargs={"depth": 28, "widen_factor": 4}'`.
"""

from rsim_jax.train import TrainConfig


def get_config(variant: str = "local") -> TrainConfig:
  if variant == "local":
    return TrainConfig(model="wide_resnet", model_kwargs={"depth": 10, "widen_factor": 4}, data="digits",
                       batch_size=64, eval_batch_size=128, num_epochs=20, lr=0.05, warmup_epochs=1,
                       end_lr_fraction=0.02, weight_decay=5e-4, until_zero_train_error=True, max_epochs=60)
  if variant == "cifar10":
    return TrainConfig(model="wide_resnet", model_kwargs={"depth": 28, "widen_factor": 8}, data="cifar10",
                       batch_size=128, eval_batch_size=1000, num_epochs=200, lr=0.1, warmup_epochs=1,
                       end_lr_fraction=0.01, weight_decay=5e-4, augment=True, until_zero_train_error=True,
                       max_epochs=300)
  raise ValueError(f"Unknown variant {variant!r}; choose local or cifar10.")
