"""The whitening's share of a step: update and model FLOPs counted from the abstract programs."""

import pytest

from train.bench import whitening_share


@pytest.mark.slow
def test_polar_express_costs_steps_fifths_of_muon_and_the_model_scales_with_tokens():
  txs = whitening_share.optimizers("tiny")
  flops = {label: whitening_share.update_flops("tiny", tx) for label, tx in txs.items()}
  muon = flops["Muon (optax, 5 Newton-Schulz steps)"]
  assert flops["SWAN, polar_express 5"] == muon
  assert flops["SWAN, polar_express 8"] * 5 == muon * 8
  assert flops["SWAN, gram_polar_express 5 (default)"] < muon  # tiny's MLP kernels are 128 x 344
  tokens = 2 * whitening_share.SEQ_LEN
  assert whitening_share.model_flops("tiny", 2 * tokens) == 2 * whitening_share.model_flops(
    "tiny", tokens
  )
