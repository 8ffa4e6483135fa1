"""The run configuration's defaults are those of the stages it configures."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import glacierxr as gx
from glacierxr import config, velocity


def _stages():
    pytest.importorskip("torch")
    from glacierxr.ml.patches import PatchSequences
    from glacierxr.ml.predict import predict
    from glacierxr.ml.train import Trainer

    return [
        (config.DataConfig, gx.search),
        (config.LoadConfig, gx.load),
        (config.PatchConfig, PatchSequences),
        (config.TrainConfig, Trainer),
        (config.PredictConfig, predict),
        (config.VelocityConfig, velocity.select_pairs),
    ]


def _default(field: dataclasses.Field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def test_config__section_defaults_equal_the_stage_defaults():
    """A key that is a keyword of its stage has the stage's default (a TOML list stands for a
    tuple), so a run without a config file and a call with no arguments do the same."""
    compared = 0
    for section, stage in _stages():
        parameters = inspect.signature(stage).parameters
        for field in dataclasses.fields(section):
            parameter = parameters.get(field.name)
            if parameter is None or parameter.default is inspect.Parameter.empty:
                continue  # a config-only key (e.g. chunk_size) or a required argument
            expected = parameter.default
            expected = list(expected) if isinstance(expected, tuple) else expected
            assert _default(field) == expected, f"{section.__name__}.{field.name}"
            compared += 1
    assert compared >= 25  # the sections really are compared, not skipped
