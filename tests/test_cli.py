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

    capsys.readouterr()
    assert main(["train", "--config", str(config), "--data", str(store), "--out", str(root / "run")]) == 0
    assert (root / "run" / "model.pt").is_file()
    shown = capsys.readouterr().err  # progress bars (issue 16): epochs, and batches with the time left
    assert "training" in shown and "epoch" in shown and "batch" in shown and "<" in shown

    for suffix in (".zarr", ".nc", ".tif"):
        out = root / f"forecast{suffix}"
        assert main(["predict", "--config", str(config), "--data", str(store),
                     "--checkpoint", str(root / "run" / "model.pt"), "--out", str(out)]) == 0
        assert out.exists()
    forecast = xr.open_zarr(root / "forecast.zarr")["snow_mask_forecast"]
    assert forecast.sizes["time"] == 2 and np.isfinite(forecast.values).all()
    assert forecast.lead.values.tolist() == [1, 2]
    assert (forecast.attrs["valid_min"], forecast.attrs["valid_max"]) == (0.0, 1.0)  # issue 17
    assert 0.0 <= float(forecast.min()) and float(forecast.max()) <= 1.0

    metrics = root / "metrics.md"
    assert main(["evaluate", "--config", str(config), "--data", str(store),
                 "--checkpoint", str(root / "run" / "model.pt"), "--out", str(metrics)]) == 0
    text = metrics.read_text()
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| model")]
    assert len(shown) == 1 and "_low" not in shown[0] and "_low" in text.splitlines()[0]
    assert shown[0].count("|") < text.splitlines()[0].count("|")  # compact view; the file has all
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


def test_cli__help_shows_defaults_choices_and_what_is_written(capsys):
    assert main(["search", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(20.0; config [data] max_cloud)" in text and "2013-01-01/2021-01-01" in text
    assert main(["prepare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-cloud" in text and "--resolution" in text and "(30.0; config [load] resolution)" in text
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "[convlstm|lstm|transformer|unet|vit]" in text and "--overwrite" in text
    assert main(["predict", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "one GeoTIFF, one band per lead time" in text and "one COG per lead" not in text


def test_cli__model_choices_are_the_registry():
    from glacierxr.cli import MODELS
    from glacierxr.ml.models import list_models

    assert set(MODELS) == set(list_models())


def test_cli__search_says_which_scenes_it_asks_for(run, capsys):
    _, _, catalog = run
    assert main(["search", "--catalog", str(catalog), "--datetime", "2018"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "cloud cover <= 20 %" in first and "2018" in first and str(catalog) in first


def test_cli__a_basic_iso_day_is_a_day(run, capsys):
    _, _, catalog = run
    import glacierxr as gx

    items = gx.search(datetime="2018-01-01/2020-01-01", max_cloud=None, catalog=catalog, sign=False)
    day = items[3].datetime
    for text in (f"{day:%Y%m%d}", f"{day:%Y-%m-%d}"):
        found = gx.search(datetime=text, max_cloud=None, catalog=catalog, sign=False)
        assert [item.id for item in found] == [items[3].id], text


def test_cli__messages_name_flags_not_python_arguments(tmp_path, capsys):
    from glacierxr.cli import cli_words

    table = tmp_path / "metrics.md"
    table.write_text("an earlier table")
    assert main(["evaluate", "--data", "d", "--checkpoint", "c", "--out", str(table)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err
    assert cli_words("Pass resume=True to continue that run instead.") == "Pass --resume to continue that run instead."
    assert "glacierxr train --out RUN" in cli_words("or train first (Trainer(checkpoint_dir=...) writes last.pt)")
    assert cli_words("pass resume=False to train from scratch") == "run without --resume to train from scratch"


def test_cli__demo_prints_its_last_line_once(monkeypatch, tmp_path, capsys):
    import glacierxr.demo

    monkeypatch.setattr(glacierxr.demo, "run_demo", lambda out, quick: print(f"demo finished; report: {out}/report.md"))
    assert main(["demo", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"demo finished; report: {tmp_path}/report.md"]


def test_cli__a_config_finds_its_catalog_from_any_directory(run, tmp_path, monkeypatch, capsys):
    from glacierxr.config import RunConfig
    from glacierxr.demo import _portable

    _, _, catalog = run
    folder = catalog.parent.parent
    config = RunConfig()
    config.data.catalog = str(catalog)
    path = folder / "portable.toml"
    path.write_text(_portable(config, folder).to_toml())
    assert f'catalog = "{catalog.parent.name}/catalog.json"' in path.read_text()
    monkeypatch.chdir(tmp_path)  # another directory: the relative path resolves beside the file
    assert RunConfig.from_toml(path).data.catalog == str(folder / catalog.parent.name / "catalog.json")
    assert main(["search", "--config", str(path), "--datetime", "2018", "--max-cloud", "100"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("scenes")
