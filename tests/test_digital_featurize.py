"""Featurisation: one fixed layout shared by every digital model."""

from __future__ import annotations

import math

import pytest
import torch

from ppu.drivers.mof.capabilities import Candidate
from ppu.drivers.mof.featurize import N_FEATURES, VOCABULARY, feature_names, featurize, featurize_one
from ppu.errors import ValidationFailed


def test_layout_covers_the_lab_elements():
    for el in ["Mg", "Zn", "Cu", "Co", "Ni", "Fe", "Mn", "Al", "Ti", "Zr"]:
        assert el in VOCABULARY
    assert len(feature_names()) == N_FEATURES


def test_fractions_descriptors_and_process():
    c = Candidate(composition={"Mg": 0.5, "Zn": 0.5}, anneal_temperature_c=750, anneal_time_h=4)
    row = featurize_one(c)
    names = feature_names()
    assert row[names.index("x_Mg")] == pytest.approx(0.5)
    assert row[names.index("x_Zn")] == pytest.approx(0.5)
    assert sum(row[: len(VOCABULARY)]) == pytest.approx(1.0)
    assert row[names.index("en_std")] > 0
    assert row[names.index("anneal_temperature")] == pytest.approx(0.5)
    assert row[names.index("log_anneal_time")] == pytest.approx(math.log1p(4) / math.log1p(1000))
    pure = featurize_one({"composition": {"Cu": 1.0}})
    assert pure[names.index("en_std")] == 0 and pure[names.index("radius_std")] == 0


def test_batch_tensor_and_unknown_element():
    x = featurize([{"composition": {"Mg": 1.0}}, {"composition": {"Co": 0.3, "Ni": 0.7}}])
    assert x.shape == (2, N_FEATURES) and x.dtype == torch.float64
    assert featurize([]).shape == (0, N_FEATURES)
    with pytest.raises(ValidationFailed) as err:
        featurize_one({"composition": {"Mg": 0.5, "Xx": 0.5}})
    assert err.value.field == "inputs.candidate.composition"
    assert "Xx" in str(err.value) and "known elements" in str(err.value)
