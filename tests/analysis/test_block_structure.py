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


def test_block_vs_baseline_needs_gain_and_pc1():
  names = [f"l{i}" for i in range(30)]
  trained, baseline = _with_block(30, 8, 21), _with_block(30, 10, 13)
  pc1_trained = np.full(30, 0.2)
  pc1_trained[8:22] = 0.9
  cmp = block_structure.block_vs_baseline(
      trained, baseline, trained_pc1=pc1_trained, baseline_pc1=np.full(30, 0.25), names=names
  )
  assert cmp.size_gain == 10 and cmp.trained_pc1_fraction == pytest.approx(0.9) and cmp.has_block
  same = block_structure.block_vs_baseline(baseline, baseline, trained_pc1=np.full(30, 0.9), baseline_pc1=np.full(30, 0.9))
  assert not same.has_block


def test_errors():
  with pytest.raises(ValueError, match="square"):
    block_structure.find_block(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="NaN"):
    block_structure.find_block(np.full((3, 3), np.nan))
  with pytest.raises(ValueError, match="threshold"):
    block_structure.find_block(np.eye(3), threshold=1.5)
  with pytest.raises(ValueError, match="same architecture"):
    block_structure.block_vs_baseline(np.eye(3), np.eye(4))
