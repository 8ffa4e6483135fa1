"""The oracle's observation model of benchmarks/skill.py recovers a known offset and coefficients."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

SKILL = Path(__file__).resolve().parents[1] / "benchmarks" / "skill.py"


@pytest.fixture(scope="module")
def skill():
    spec = importlib.util.spec_from_file_location("skill_benchmark", SKILL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_observation__recovers_offset_and_per_pixel_coefficients(skill):
    rng = np.random.default_rng(0)
    shape = (60, 20, 20)
    cover = ndimage.gaussian_filter(rng.random(shape), (0, 2, 2))  # smooth fields, as snow cover
    ice = (rng.random(shape) < 0.3).astype(float)
    alpha, beta, gamma = rng.uniform(0, 0.2, (20, 20)), rng.uniform(0.5, 1, (20, 20)), rng.uniform(0.3, 0.6, (20, 20))
    offset = (1.0, -0.5)
    shifted = [np.stack([ndimage.shift(f, offset, order=1, mode="nearest") for f in x]) for x in (cover, ice)]
    snow = alpha + beta * shifted[0] + gamma * shifted[1] + 0.001 * rng.standard_normal(shape)
    snow[3, 4, 5] = np.nan  # a missing composite value is left out
    found, (a, b, g) = skill._fit_observation(cover, ice, snow)
    assert found == offset
    inner = (slice(3, -3), slice(3, -3))  # away from the edge the shift fills by replication
    np.testing.assert_allclose(b[inner], beta[inner], atol=0.02)
    np.testing.assert_allclose(g[inner], gamma[inner], atol=0.02)
    np.testing.assert_allclose(a[inner], alpha[inner], atol=0.02)


def test_persistence__is_the_lag_1_autocorrelation_of_an_ar1_generator(skill):
    rng = np.random.default_rng(1)
    phi, months = np.array([[0.0, 0.6]]), 4000  # a pixel without memory, one with
    series = np.zeros((months, 1, 2))
    for t in range(1, months):
        series[t] = phi * series[t - 1] + rng.standard_normal((1, 2))
    series[:, 0, 0] *= 0.01  # the memoryless pixel carries little of the variance
    assert skill._persistence(series[:-1], series[1:]) == pytest.approx(0.6, abs=0.04)
    series[:, 0, 1] = 0.0  # only the memoryless pixel left
    assert abs(skill._persistence(series[:-1], series[1:])) < 0.06
