"""Every `glacierxr` subcommand on a tiny sample: --help, and a whole run from the command line."""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401
import xarray as xr

from glacierxr.cli import main

SUBCOMMANDS = ["sample", "regions", "search", "prepare", "velocity", "train", "finetune", "predict", "evaluate", "demo"]

CONFIG = """
[data]
datetime = "2018-01-01/2020-01-01"
max_cloud = 20.0

[preprocess]
months = 1

[patches]
input_steps = 2
target_steps = 2
patch = 16
stride = 8
val_fraction = 0.2
test_fraction = 0.2

[model]
name = "convlstm"
hidden_channels = [4]
dropout = 0.0
output_steps = 2

[train]
max_epochs = 1
batch_size = 8
max_batches_per_epoch = 3

[predict]
steps = 2
"""


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_cli__every_subcommand_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = root / "run.toml"
    config.write_text(CONFIG)
    sample = root / "sample"
    assert main(["sample", "--out", str(sample), "--width", "40", "--height", "40",
                 "--start", "2018-01-01", "--end", "2020-01-01"]) == 0
    return root, config, sample / "catalog.json"


@pytest.mark.slow
def test_cli__search_prepare_train_predict_evaluate_finetune(run, capsys):
    root, config, catalog = run
    assert main(["search", "--config", str(config), "--catalog", str(catalog)]) == 0
    table = capsys.readouterr().out
    assert "scenes" in table.splitlines()[-1] and int(table.splitlines()[-1].split()[0]) > 10

    store = root / "composites.zarr"
    assert main(["prepare", "--config", str(config), "--catalog", str(catalog), "--out", str(store)]) == 0
    composites = xr.open_zarr(store)
    assert composites.sizes["time"] == 24 and "glacierxr_config" in composites["snow_mask"].attrs

    assert main(["train", "--config", str(config), "--data", str(store), "--out", str(root / "run")]) == 0
    assert (root / "run" / "model.pt").is_file()

    for suffix in (".zarr", ".nc", ".tif"):
        out = root / f"forecast{suffix}"
        assert main(["predict", "--config", str(config), "--data", str(store),
                     "--checkpoint", str(root / "run" / "model.pt"), "--out", str(out)]) == 0
        assert out.exists()
    forecast = xr.open_zarr(root / "forecast.zarr")["snow_mask_forecast"]
    assert forecast.sizes["time"] == 2 and np.isfinite(forecast.values).all()
    assert forecast.lead.values.tolist() == [1, 2]

    metrics = root / "metrics.md"
    assert main(["evaluate", "--config", str(config), "--data", str(store),
                 "--checkpoint", str(root / "run" / "model.pt"), "--out", str(metrics)]) == 0
    text = metrics.read_text()
    for name in ("convlstm", "persistence", "seasonal_naive", "climatology"):
        assert name in text

    # Paper experiment 2: fine-tune on another glacier (the sample's seed 1 is another valley).
    other = root / "other"
    assert main(["sample", "--out", str(other), "--seed", "1", "--width", "40", "--height", "40",
                 "--start", "2018-01-01", "--end", "2020-01-01"]) == 0
    other_store = root / "other.zarr"
    assert main(["prepare", "--config", str(config), "--catalog", str(other / "catalog.json"),
                 "--out", str(other_store)]) == 0
    assert not np.array_equal(xr.open_zarr(other_store).x.values, composites.x.values)
    assert main(["finetune", "--config", str(config), "--data", str(other_store), "--freeze", "encoder",
                 "--checkpoint", str(root / "run" / "model.pt"), "--out", str(root / "tuned")]) == 0
    assert (root / "tuned" / "model.pt").is_file()


def test_cli__user_mistake_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["predict", "--data", str(tmp_path / "none.zarr"), "--checkpoint", "x.pt",
                 "--out", str(tmp_path / "f.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and len(err.splitlines()) == 1
