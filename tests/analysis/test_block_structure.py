import numpy as np
import pytest

from rsim_jax.analysis import block_structure


def _decaying(num_layers, rate=0.15):
  """CKA falling with layer distance: no block at 0.9."""
  idx = np.arange(num_layers)
  return np.exp(-rate * np.abs(idx[:, None] - idx[None, :]))


def _with_block(num_layers, start, end, value=0.97):
  cka = _decaying(num_layers)
  cka[start : end + 1, start : end + 1] = value
  np.fill_diagonal(cka, 1.0)
  return cka


def test_finds_planted_block():
  block = block_structure.find_block(_with_block(30, 8, 21), threshold=0.9, names=[f"l{i}" for i in range(30)])
  assert (block.start, block.end, block.size) == (8, 21, 14)
  assert block.fraction == pytest.approx(14 / 30)
  assert block.mean_cka == pytest.approx(0.97)
  assert block.names[0] == "l8" and block.names[-1] == "l21"


def test_pairwise_not_just_neighbours():
  # A chain where each neighbour pair is similar but distant pairs are not is not a block.
  cka = _decaying(20, rate=0.05)  # neighbours 0.95, 3 apart 0.86
  block = block_structure.find_block(cka, threshold=0.9)
  assert block.size == 3  # exp(-0.05*2) = 0.905 >= 0.9, exp(-0.15) < 0.9


def test_no_block():
  block = block_structure.find_block(_decaying(10, rate=1.0), threshold=0.9)
  assert block.size == 0 and block.end == -1 and np.isnan(block.mean_cka)


def test_longest_of_two_blocks_and_threshold_dependence():
  cka = _with_block(40, 2, 6)
  cka[20:35, 20:35] = 0.85
  np.fill_diagonal(cka, 1.0)
  assert block_structure.find_block(cka, threshold=0.9).start == 2
  assert block_structure.find_block(cka, threshold=0.8).start == 20


def test_eligible_layers_restrict_the_run():
  cka = _with_block(30, 8, 21)
  eligible = np.zeros(30, bool)
  eligible[12:18] = True
  block = block_structure.find_block(cka, threshold=0.9, eligible=eligible)
  assert (block.start, block.end) == (12, 17)
  assert block_structure.find_block(cka, eligible=np.zeros(30, bool)).size == 0


def _pc1_profile(num_layers, start=None, end=None, inside=0.92, outside=0.2):
  pc1 = np.full(num_layers, outside)
  if start is not None:
    pc1[start : end + 1] = inside
  return pc1


def test_detector_finds_block_read_against_init_at_the_same_layers():
  # The ResNet-56 case: a trained 20-layer block (PC1 0.92) where the untrained net has PC1 0.41, while
  # the untrained net's longest similar run is longer and sits elsewhere (its last stage). The earlier
  # run-length rule reported "no block" (size gain −8); reading the contrast at the same layers finds it.
  names = [f"l{i}" for i in range(56)]
  trained = _with_block(56, 21, 40, value=0.95)
  init = _with_block(56, 28, 55, value=0.93)
  cmp = block_structure.block_vs_baseline(
      trained, init, trained_pc1=_pc1_profile(56, 21, 40), baseline_pc1=_pc1_profile(56, 21, 40, inside=0.41),
      names=names)
  assert cmp.has_block and (cmp.trained.start, cmp.trained.end) == (21, 40)
  assert cmp.size_gain < 0  # shorter than the untrained run elsewhere, and still a block
  assert cmp.trained_pc1_fraction == pytest.approx(0.92) and cmp.baseline_pc1_fraction == pytest.approx(0.41)
  assert cmp.pc1_contrast == pytest.approx(0.51)
  assert cmp.trained.names[0] == "l21"
  assert cmp.cka_to_rest < 0.5  # dark against the early layers
  assert cmp.to_json()["has_block"] is True


def test_detector_rejects_untrained_deep_net_long_trivial_run():
  # An untrained deep net compared with itself: a long similar run, even a large PC1, but no gain over init.
  init = _with_block(56, 28, 55, value=0.93)
  pc1 = _pc1_profile(56, 28, 55, inside=0.7)
  cmp = block_structure.block_vs_baseline(init, init, trained_pc1=pc1, baseline_pc1=pc1)
  assert not cmp.has_block and cmp.trained.size == 0
  assert cmp.trained_run.size == 28  # the run is reported, but it is not a block


def test_detector_rejects_trained_shallow_net_without_dominant_pc():
  # ResNet-20 ×1 on digits: the trained net has a similar run (stem and stage 1) but PC1 ≤ 0.33 everywhere.
  trained, init = _with_block(21, 0, 8), _with_block(21, 0, 7)
  cmp = block_structure.block_vs_baseline(trained, init, trained_pc1=_pc1_profile(21, 0, 8, inside=0.33),
                                          baseline_pc1=_pc1_profile(21, outside=0.15))
  assert not cmp.has_block
  assert cmp.trained_pc1_fraction == pytest.approx(0.33)  # read over the trained run when there is no block


def test_detector_needs_mutual_similarity_not_just_dominant_layers():
  # Dominated layers that are not similar to each other (CKA decaying with distance) are no block.
  cka = _decaying(30, rate=0.3)
  cmp = block_structure.block_vs_baseline(cka, _decaying(30, rate=0.3), trained_pc1=_pc1_profile(30, 5, 25),
                                          baseline_pc1=_pc1_profile(30))
  assert not cmp.has_block


def test_detector_on_planted_synthetic_stack():
  # Activations of a synthetic 24-layer stack: layers 8–17 share one dominant direction (a block), the rest are
  # independent mixtures; the untrained twin has no shared direction. CKA and PC1 computed from the activations.
  from rsim_jax import kernels
  rng = np.random.default_rng(0)
  n, d = 400, 32
  common = rng.standard_normal((n, 1))
  base = rng.standard_normal((n, d))

  def stack(block):
    layers = []
    for i in range(24):
      x = 0.35 * base + rng.standard_normal((n, d))
      if block and 8 <= i <= 17:
        x = x + 6.0 * common * rng.standard_normal((1, d))  # the shared signal, in a direction of its own
      layers.append(x.astype(np.float32))
    cka = np.array([[float(kernels.cka(a, b)) for b in layers] for a in layers])
    pc1 = np.array([float(kernels.first_pc_fraction(a)) for a in layers])
    return cka, pc1

  trained_cka, trained_pc1 = stack(True)
  init_cka, init_pc1 = stack(False)
  cmp = block_structure.block_vs_baseline(trained_cka, init_cka, trained_pc1=trained_pc1, baseline_pc1=init_pc1)
  assert cmp.has_block and (cmp.trained.start, cmp.trained.end) == (8, 17)
  control = block_structure.block_vs_baseline(init_cka, init_cka, trained_pc1=init_pc1, baseline_pc1=init_pc1)
  assert not control.has_block


def test_detector_without_pc1_uses_cka_contrast():
  trained, init = _with_block(30, 8, 21, value=0.97), _decaying(30)
  assert block_structure.block_vs_baseline(trained, init).has_block
  assert not block_structure.block_vs_baseline(trained, trained).has_block


def test_errors():
  with pytest.raises(ValueError, match="square"):
    block_structure.find_block(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="NaN"):
    block_structure.find_block(np.full((3, 3), np.nan))
  with pytest.raises(ValueError, match="threshold"):
    block_structure.find_block(np.eye(3), threshold=1.5)
  with pytest.raises(ValueError, match="same architecture"):
    block_structure.block_vs_baseline(np.eye(3), np.eye(4))
  with pytest.raises(ValueError, match="both"):
    block_structure.block_vs_baseline(np.eye(3), np.eye(3), trained_pc1=np.ones(3))
  with pytest.raises(ValueError, match="shape"):
    block_structure.block_vs_baseline(np.eye(3), np.eye(3), trained_pc1=np.ones(4), baseline_pc1=np.ones(4))
  with pytest.raises(ValueError, match="NaN"):
    block_structure.dominated_layers(np.array([np.nan, 1.0]), np.ones(2))
  with pytest.raises(ValueError, match="eligible"):
    block_structure.find_block(np.eye(3), eligible=np.ones(4, bool))


def test_block_json_round_trip():
  block = block_structure.find_block(_with_block(30, 8, 21), threshold=0.9, names=[f"l{i}" for i in range(30)])
  assert block_structure.Block.from_json(block.to_json()) == block
  unnamed = {k: v for k, v in block.to_json().items() if k != "names"}
  assert block_structure.Block.from_json(unnamed) == block_structure.Block(**unnamed)


def test_block_confidence_reads_margins_in_standard_errors():
  from rsim_jax.analysis.block_structure import Block, block_confidence

  cka = np.full((8, 8), 0.3)
  cka[2:6, 2:6] = 0.97
  cka[2, 5] = cka[5, 2] = 0.93  # the weakest pair inside
  cka[1, 2:6] = cka[2:6, 1] = 0.85  # the layer before: 0.05 under the threshold
  np.fill_diagonal(cka, 1.0)
  se = np.full((8, 8), 0.01)
  pc1 = np.array([0.1, 0.1, 0.8, 0.85, 0.9, 0.8, 0.1, 0.1])
  out = block_confidence(Block(2, 5, 4, 0.5, 0.96, 0.9), cka, se, trained_pc1=pc1, trained_pc1_stderr=np.full(8, 0.03),
                         baseline_pc1=np.full(8, 0.3), baseline_pc1_stderr=np.full(8, 0.04))
  assert out["weakest_pair"] == [2, 5] and out["weakest_pair_z"] == pytest.approx(3.0)
  assert out["edge_z"][0] == pytest.approx(-5.0) and out["edge_z"][1] == pytest.approx(-60.0)
  assert out["mean_cka"] == pytest.approx((10 * 0.97 + 2 * 0.93) / 12)
  assert out["pc1_contrast"] == pytest.approx(0.8375 - 0.3) and out["pc1_contrast_stderr"] == pytest.approx(0.05)
  assert block_confidence({"start": 0, "end": -1, "size": 0}, cka, se) == {}
  edge = block_confidence({"start": 0, "end": 3, "size": 4}, cka, se)
  assert np.isnan(edge["edge_z"][0])
  with pytest.raises(ValueError, match="same"):
    block_confidence({"start": 2, "end": 5, "size": 4}, cka, se[:4])
