import numpy as np
import pytest
from PIL import Image

from rsim_jax import data
from rsim_jax.data import augment


def _images(n=64, h=8, w=8, c=1, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def test_example_keys_are_a_pure_function_of_seed_step_row():
  keys = data.example_keys(3, 17, np.arange(128))
  assert keys.dtype == np.uint64 and len(set(keys.tolist())) == 128
  np.testing.assert_array_equal(keys[40:50], data.example_keys(3, 17, np.arange(40, 50)))
  assert [augment.example_key(3, 17, r) for r in (0, 5, 127)] == keys[[0, 5, 127]].tolist()
  assert not np.array_equal(keys, data.example_keys(3, 18, np.arange(128)))
  assert not np.array_equal(keys, data.example_keys(4, 17, np.arange(128)))
  bits = np.unpackbits(data.example_keys(0, 0, np.arange(4096)).view(np.uint8))
  assert abs(bits.mean() - 0.5) < 0.01


def test_flip_is_an_exact_mirror():
  images = _images()
  keys = data.example_keys(1, 0, np.arange(len(images)))
  out = data.cifar_augment_batch(images, keys, padding=0)  # no crop: identity or mirror
  flipped = np.array([np.array_equal(o, im[:, ::-1]) for o, im in zip(out, images)])
  same = np.array([np.array_equal(o, im) for o, im in zip(out, images)])
  assert (flipped ^ same).all() and 16 < flipped.sum() < 48


def test_crop_is_a_window_of_the_padded_image_and_matches_per_example():
  images = _images(n=200, h=32, w=32, c=3)
  keys = data.example_keys(2, 5, np.arange(len(images)))
  out = data.cifar_augment_batch(images, keys)  # padding 4 for 32×32
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  offsets = set()
  for i in range(len(images)):
    windows = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
               if np.array_equal(out[i], (lambda w: w[:, ::-1] if f else w)(padded[i, dy:dy + 32, dx:dx + 32]))]
    assert windows, i
    offsets.add(windows[0][:2])
    np.testing.assert_array_equal(data.cifar_augment(images[i], keys[i]), out[i])  # per example == batch
  assert len(offsets) > 40  # offsets spread over the 9×9 choices
  np.testing.assert_array_equal(out, data.cifar_augment_batch(images, keys.copy()))  # deterministic
  assert augment.default_padding(32) == 4 and augment.default_padding(28) == 4 and augment.default_padding(8) == 1


def _triangle_matrix(n_in, n_out):
  """Reference `(n_out, n_in)` weights of the antialiased triangle filter, from its definition: output pixel o
  (centre c_o = (o + ½)·n_in/n_out) weighs input pixel x (centre x + ½) by max(0, 1 − |x + ½ − c_o| / s),
  s = max(1, n_in/n_out), normalised to sum 1."""
  scale = n_in / n_out
  support = max(scale, 1.0)
  centres = (np.arange(n_out) + 0.5) * scale
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None] + 0.5 - centres[:, None]) / support)
  return w / w.sum(1, keepdims=True)


def test_bilinear_resize_is_pillows_and_the_triangle_filter():
  for c in (1, 2, 3):
    images = _images(n=3, h=8, w=12, c=c, seed=c)
    for size in (16, 32, 5, (6, 20)):
      sh, sw = (size, size) if isinstance(size, int) else size
      ours = data.resize_images(images, size, "bilinear")
      assert ours.shape == (3, sh, sw, c) and ours.dtype == np.uint8
      for im, o in zip(images, ours):
        for ch in range(c):  # Pillow on each channel as an "L" image: the reference, bit for bit
          ref = np.asarray(Image.fromarray(im[..., ch]).resize((sw, sh), Image.Resampling.BILINEAR))
          np.testing.assert_array_equal(o[..., ch], ref, err_msg=f"{c} channels, size {size}")
        # The filter's definition in float; Pillow's 8-bit fixed-point passes round to within 1 grey level of it.
        exact = np.einsum("oh,hwc,pw->opc", _triangle_matrix(8, sh), im.astype(float), _triangle_matrix(12, sw))
        assert np.abs(exact - o).max() <= 1.0, (c, size)
  # A hand-computed value: halving [0, 100, 200, 250] weighs (3, 3, 1, 0)/7 and (0, 1, 3, 3)/7 → 71.4, 207.1.
  ramp = np.tile(np.array([0, 100, 200, 250], np.uint8), (4, 1))[None, ..., None]
  np.testing.assert_array_equal(data.resize_images(ramp, (4, 2), "bilinear")[0, :, :, 0], [[71, 207]] * 4)
  const = np.full((2, 8, 8, 1), 77, np.uint8)
  assert (data.resize_images(const, 20, "bilinear") == 77).all()
  np.testing.assert_array_equal(data.resize_images(_images(c=3), 16, "nearest")[:, ::2, ::2], _images(c=3))


def test_convert_channels():
  grey = _images(c=1)
  np.testing.assert_array_equal(data.convert_channels(grey, 3), np.repeat(grey, 3, -1))
  colour = _images(c=3)
  ref = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in colour])[..., None]
  assert np.abs(data.convert_channels(colour, 1).astype(int) - ref).max() <= 1


def test_normalize_is_the_formula_and_per_example_equals_batch():
  images = _images(c=3)
  mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
  out = data.normalize(images, mean, std)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, (images / 255 - np.asarray(mean)) / np.asarray(std), atol=1e-5)
  np.testing.assert_array_equal(data.normalize(images[5], mean, std), out[5])


# --- ImageNet transforms on synthetic images ---


def _photo(h, w, seed=0):
  """A smooth synthetic colour image (gradients + a left/right asymmetric bar)."""
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.stack([255 * yy / h, 255 * xx / w, 128 + 100 * np.sin(xx / 7.0 + seed)], -1)
  img[:, : w // 5, :] = 20
  return np.clip(img, 0, 255).astype(np.uint8)


def test_inception_crop_shapes_ranges_and_determinism():
  image = _photo(375, 500)
  outs = [data.inception_crop(image, data.example_keys(0, 0, [r])[0]) for r in range(40)]
  assert all(o.shape == (224, 224, 3) and o.dtype == np.uint8 for o in outs)
  assert all(image.min() <= o.min() and o.max() <= image.max() for o in outs)  # bilinear: convex combinations
  key = data.example_keys(0, 0, [3])[0]
  np.testing.assert_array_equal(data.inception_crop(image, key), outs[3])
  assert len({o.tobytes() for o in outs}) == 40
  small = data.inception_crop(image, key, size=64)
  assert small.shape == (64, 64, 3)
  grey = data.inception_crop(image[..., :1], key, size=32)
  assert grey.shape == (32, 32, 1)
  const = np.full((50, 80, 3), 200, np.uint8)
  assert (data.inception_crop(const, key) == 200).all()


def test_inception_crop_boxes_follow_the_area_and_aspect_ranges():
  rng = np.random.default_rng(0)
  areas, aspects = [], []
  for _ in range(2000):
    top, left, h, w = augment.inception_crop_box(300, 400, rng)
    assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
    areas.append(h * w / (300 * 400))
    aspects.append(w / h)
  areas, aspects = np.asarray(areas), np.asarray(aspects)
  assert areas.min() >= 0.07 and areas.max() <= 1.0 and np.median(areas) < 0.6
  assert aspects.min() >= 0.74 and aspects.max() <= 1.35
  # An extreme image: the 10 tries fail, and the fallback is the centred crop clamped to aspect 4/3.
  assert augment.inception_crop_box(2, 400, np.random.default_rng(0)) == (0, 198, 2, 3)


def test_inception_flip_is_about_half():
  image = _photo(64, 64)
  left_dark = [data.inception_crop(image, k, size=32)[:, :3].mean() < data.inception_crop(image, k, size=32)[:, -3:].mean()
               for k in data.example_keys(5, 0, np.arange(200))]
  assert 60 < sum(left_dark) < 140


def test_center_crop_resizes_the_shorter_side_then_cuts_the_centre():
  square = _photo(256, 256)
  np.testing.assert_array_equal(data.center_crop(square), square[16:240, 16:240])
  image = _photo(300, 400)
  out = data.center_crop(image)
  assert out.shape == (224, 224, 3)
  ref = np.asarray(Image.fromarray(image).resize((341, 256), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(out, ref[16:240, 58:282])
  grey = data.center_crop(image[..., 1:2], size=64, resize_size=73)  # one channel: Pillow's "L", same filter
  ref = np.asarray(Image.fromarray(image).resize((97, 73), Image.Resampling.BILINEAR))[..., 1:2]
  np.testing.assert_array_equal(grey, ref[4:68, 16:80])
  np.testing.assert_array_equal(data.center_crop(image), out)
  assert data.center_crop(_photo(500, 200), size=32).shape == (32, 32, 3)
  with pytest.raises(ValueError, match="`resize_size`"):
    data.center_crop(image, size=224, resize_size=200)
