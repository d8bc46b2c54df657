"""ImageNet ResNets (He et al. 2016) with the standard recipe, streamed from tensorflow-datasets.

  python -m rsim_jax.train --config experiments/train_configs/imagenet_resnet.py:resnet50 --workdir runs/r50
  python -m rsim_jax.train --config experiments/train_configs/imagenet_resnet.py:local --workdir runs/r50_tiny \
      --set data_kwargs='{"image_size": 32, "data_dir": "/path/to/tfds"}'

ImageNet is never held in memory: `tfds:imagenet2012` (ArrayRecord files prepared with
`tfds build imagenet2012 --file_format=array_record`, in $TFDS_DATA_DIR or `data_kwargs["data_dir"]`) is read
record by record through grain, each process reading only its rows of every global batch (see
`rsim_jax.train.loop`). Training images get the Inception random-resized crop + flip to 224×224, validation
images resize-256 / centre-crop-224.

Variants
  resnet50  ResNet-50 ×1, the standard recipe (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): SGD
            momentum 0.9, batch 1024, lr 0.4 = 0.1·B/256 after 5 linear warm-up epochs, cosine decay to 0 over
            90 epochs, weight decay 1e-4, label smoothing 0.1, zero-initialised last BN of each block, bfloat16
            compute (float32 parameters and optimizer state). An accelerator job: 1,251 steps an epoch.
  local     the same recipe in miniature for a CPU: a ResNet-14 bottleneck net (one block a stage) on 32×32
            crops, batch 16, two epochs. Runs on prepared files or under `tfds.testing.mock_data` (the tests).
"""

from rsim_jax.train import TrainConfig

BASE_BATCH = 256  # lr = BASE_LR · batch / 256 (linear scaling rule)
BASE_LR = 0.1


def _recipe(batch_size: int, **overrides) -> TrainConfig:
  settings = dict(
      model="imagenet_resnet", model_kwargs={"blocks_per_stage": (3, 4, 6, 3), "zero_init_last_bn": True},
      data="tfds:imagenet2012", train_split="train", eval_split="validation", data_kwargs={"image_size": 224},
      augment=True, batch_size=batch_size, eval_batch_size=batch_size, num_epochs=90,
      lr=BASE_LR * batch_size / BASE_BATCH, schedule="cosine", warmup_epochs=5, momentum=0.9,
      weight_decay=1e-4, label_smoothing=0.1, log_every_steps=100,
  )
  return TrainConfig(**{**settings, **overrides})


def get_config(variant: str = "local") -> TrainConfig:
  if variant == "resnet50":
    return _recipe(1024, dtype="bfloat16")
  if variant == "local":
    return _recipe(16, model_kwargs={"blocks_per_stage": (1, 1, 1, 1), "zero_init_last_bn": True},
                   data_kwargs={"image_size": 32}, num_epochs=2, warmup_epochs=0.5, log_every_steps=2)
  raise ValueError(f"Unknown variant {variant!r}; choose local or resnet50.")
