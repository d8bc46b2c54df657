"""Model families in Flax NNX: CIFAR `ResNet`, `WideResNet`, `ImageNetResNet` (ResNet-50/101/152), `MLP`,
`DeepNet`.

Every model maps NHWC float32 images to logits and captures its layers on request:

    model = ResNet(20, width=2, num_classes=10, rngs=nnx.Rngs(0))
    logits = model(x)                          # (b, num_classes)
    logits, acts = model(x, capture=True)      # acts: ordered dict, names == model.layer_names
    model.eval()                               # BatchNorm running statistics (for extraction / evaluation)

`build(family, **kwargs)` makes a model by name (the training config stores `family` + kwargs), and
`param_count(lambda: ...)` counts parameters on abstract shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flax import nnx

from rsim_jax.models.common import param_count, resolve_dtype
from rsim_jax.models.imagenet_resnet import ImageNetResNet, ResNet50, ResNet101, ResNet152
from rsim_jax.models.mlp import MLP, DeepNet
from rsim_jax.models.resnet import ResNet
from rsim_jax.models.wide_resnet import WideResNet

FAMILIES = {
    "resnet": ResNet,
    "wide_resnet": WideResNet,
    "imagenet_resnet": ImageNetResNet,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "mlp": MLP,
    "deepnet": DeepNet,
}


def input_kwargs(family: str, image_shape: Sequence[int]) -> dict[str, Any]:
  """The constructor arguments a family takes from the data: `in_channels`, and for `MLP` `in_features`,
  for `DeepNet` `image_size` (from `image_shape = (H, W, C)`)."""
  h, w, c = (int(s) for s in image_shape)
  if family == "mlp":
    return {"in_features": h * w * c}
  out = {"in_channels": c}
  if family == "deepnet":
    if h != w:
      raise ValueError(f"DeepNet takes square images, got {h}×{w}.")
    out["image_size"] = h
  return out


def build(
    family: str, kwargs: Mapping[str, Any] | None = None, *, rngs: nnx.Rngs | int = 0,
    image_shape: Sequence[int] | None = None, num_classes: int | None = None,
) -> nnx.Module:
  """Makes a model of `family` (a key of `FAMILIES`) from constructor `kwargs`.

  `image_shape` (H, W, C) and `num_classes`, when given, fill the arguments that depend on the data
  (`in_channels`, `in_features`, `image_size`, `num_classes`) unless `kwargs` sets them.
  """
  if family not in FAMILIES:
    raise ValueError(f"Unknown model family {family!r}; choose one of {sorted(FAMILIES)}.")
  kw: dict[str, Any] = {}
  if image_shape is not None:
    kw.update(input_kwargs(family, image_shape))
  if num_classes is not None:
    kw["num_classes"] = int(num_classes)
  kw.update(kwargs or {})
  if isinstance(rngs, int):
    rngs = nnx.Rngs(rngs)
  return FAMILIES[family](**kw, rngs=rngs)


__all__ = [
    "FAMILIES", "DeepNet", "ImageNetResNet", "MLP", "ResNet", "ResNet50", "ResNet101", "ResNet152",
    "WideResNet", "build", "input_kwargs", "param_count", "resolve_dtype",
]
