"""The ``glacierxr`` command.

Every subcommand has ``--help``. User mistakes (a bad path, an unknown model, a config with a
typo, no scenes found) end in one line on stderr and exit code 2 — no traceback. Pass
``--debug`` before the subcommand to see the traceback anyway.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from glacierxr.errors import GlacierXRError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _config(path: str | None, **overrides):
    """Load the TOML config (or defaults) and apply command-line overrides that were given."""
    from glacierxr.config import load_config

    config = load_config(path)
    for dotted, value in overrides.items():
        if value is None or value == ():
            continue
        section, key = dotted.split("__")
        if section == "model" and key != "name":
            config.model.params[key] = value
        else:
            setattr(getattr(config, section), key, value)
    return config


def _bbox(value: str | None):
    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4:
        raise click.BadParameter("give four comma-separated numbers: west,south,east,north (lon/lat)")
    return parts


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="glacierxr")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """glacierxr: measure and forecast glacier change from Landsat Collection-2 Level-2."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="TOML file with the run configuration (see `glacierxr.config`).",
)


@cli.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False), default="glacierxr-sample", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Another seed gives another glacier.")
@click.option("--width", type=int, default=256, show_default=True)
@click.option("--height", type=int, default=256, show_default=True)
@click.option("--start", default="2013-04-01", show_default=True)
@click.option("--end", default="2021-04-01", show_default=True)
@click.option("--overwrite", is_flag=True)
def sample(out, seed, width, height, start, end, overwrite):
    """Write the embedded synthetic sample (COGs + STAC catalog + truth)."""
    from glacierxr.sample import write_catalog

    path = write_catalog(
        out, seed=seed, width=width, height=height, start=start, end=end, overwrite=overwrite, progress=True
    )
    click.echo(str(path))


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--catalog", default=None, help="STAC API URL or path to a static catalog.json.")
@click.option("--glacier", default=None, help="A named region, e.g. parvati (see `glacierxr regions`).")
@click.option("--bbox", default=None, help="west,south,east,north in degrees.")
@click.option("--datetime", "datetime_", default=None, help="e.g. 2013-01-01/2021-01-01")
@click.option("--max-cloud", type=float, default=None)
@click.option("--limit", type=int, default=None)
def search(config_path, catalog, glacier, bbox, datetime_, max_cloud, limit):
    """Search scenes and print them as a table."""
    from glacierxr.pipeline import find_scenes

    config = _config(
        config_path, data__catalog=catalog, data__glacier=glacier, data__bbox=_bbox(bbox),
        data__datetime=datetime_, data__max_cloud=max_cloud, data__limit=limit,
    )
    items = find_scenes(config.data)
    click.echo(f"{'datetime':<20} {'id':<42} {'platform':<10} {'cloud %':>7}")
    for item in items:
        cloud = item.properties.get("eo:cloud_cover")
        click.echo(
            f"{item.datetime:%Y-%m-%d %H:%M:%S} {item.id:<42} {item.properties.get('platform', ''):<10} "
            f"{cloud if cloud is None else format(cloud, '7.2f'):>7}"
        )
    click.echo(f"{len(items)} scenes")


@cli.command(context_settings=CONTEXT)
def regions():
    """List the named glacier regions usable as --glacier."""
    from glacierxr.regions import REGIONS

    for key, region in REGIONS.items():
        west, south, east, north = region.bbox
        click.echo(f"{key:<12} {west:9.3f} {south:8.3f} {east:9.3f} {north:8.3f}  {region.name}")


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--catalog", default=None, help="STAC API URL or path to a static catalog.json.")
@click.option("--glacier", default=None)
@click.option("--bbox", default=None, help="west,south,east,north in degrees.")
@click.option("--datetime", "datetime_", default=None)
@click.option("--months", type=int, default=None, help="Composite length in months.")
@click.option("--out", type=click.Path(), required=True, help="Output Zarr store (e.g. composites.zarr).")
@click.option("--overwrite", is_flag=True)
def prepare(config_path, catalog, glacier, bbox, datetime_, months, out, overwrite):
    """Catalog → masked, gap-filled, aligned snow-mask composites in Zarr."""
    from glacierxr.pipeline import prepare as run_prepare

    config = _config(
        config_path, data__catalog=catalog, data__glacier=glacier, data__bbox=_bbox(bbox),
        data__datetime=datetime_, preprocess__months=months,
    )
    click.echo(str(run_prepare(config, out, overwrite=overwrite)))


def _train_command(data, out, config, *, resume=False, init=None, freeze=()):
    from glacierxr.pipeline import open_composites, train

    composites = open_composites(data)
    _, history = train(composites, config, out, resume=resume, init_checkpoint=init, freeze=freeze)
    last = history.iloc[-1]
    click.echo(
        f"trained {len(history)} epochs; val_loss {last.get('val_loss', float('nan')):.5f}; "
        f"model: {Path(out) / 'model.pt'}"
    )


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--data", type=click.Path(), required=True, help="Composites from `glacierxr prepare`.")
@click.option("--model", "model_name", default=None, help="lstm, convlstm, unet, transformer or vit.")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
def train(config_path, data, model_name, epochs, batch_size, out, resume):
    """Train a forecasting model on patch sequences of the composites."""
    config = _config(config_path, model__name=model_name, train__max_epochs=epochs, train__batch_size=batch_size)
    _train_command(data, out, config, resume=resume)


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--checkpoint", type=click.Path(), required=True, help="model.pt trained on another glacier.")
@click.option("--data", type=click.Path(), required=True, help="Composites of the new glacier.")
@click.option("--freeze", multiple=True, help="Parameter-name prefix to keep fixed (repeatable).")
@click.option("--epochs", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--out", type=click.Path(file_okay=False), required=True)
def finetune(config_path, checkpoint, data, freeze, epochs, lr, out):
    """Fine-tune a trained model on another glacier's composites."""
    config = _config(config_path, train__max_epochs=epochs, train__lr=lr)
    _train_command(data, out, config, init=checkpoint, freeze=tuple(freeze))


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--data", type=click.Path(), required=True, help="Composites from `glacierxr prepare`.")
@click.option("--checkpoint", type=click.Path(), required=True, help="model.pt from `glacierxr train`.")
@click.option("--steps", type=int, default=None, help="Periods to forecast.")
@click.option("--out", type=click.Path(), required=True, help="Output: .zarr, .nc or .tif (one COG per lead).")
@click.option("--overwrite", is_flag=True)
def predict(config_path, data, checkpoint, steps, out, overwrite):
    """Forecast the next periods of the whole scene and write them."""
    from glacierxr.io import write
    from glacierxr.ml.checkpoint import load_model
    from glacierxr.pipeline import forecast, open_composites

    from dask.diagnostics import ProgressBar

    config = _config(config_path, predict__steps=steps)
    result = forecast(open_composites(data), load_model(checkpoint), config)
    with ProgressBar():  # write() computes; show how far it is
        path = write(result, out, overwrite=overwrite)
    click.echo(str(path))


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--data", type=click.Path(), required=True)
@click.option("--checkpoint", type=click.Path(), required=True)
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the table (Markdown or .csv).")
def evaluate(config_path, data, checkpoint, split, out):
    """Score a model and the baselines (persistence, seasonal-naive, climatology)."""
    from glacierxr.evaluate import to_markdown
    from glacierxr.ml.checkpoint import load_model
    from glacierxr.pipeline import evaluate_run, open_composites

    config = _config(config_path)
    table = evaluate_run(open_composites(data), load_model(checkpoint), config, split=split)
    text = to_markdown(table)
    click.echo(text)
    if out:
        out = Path(out)
        if out.suffix == ".csv":
            table.to_csv(out, index=False)
        else:
            out.write_text(text + "\n")


@cli.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True)
@click.option("--quick", is_flag=True, help="Smaller sample and shorter training (for tests).")
def demo(out, quick):
    """The whole pipeline on the embedded sample: figures, forecast, metrics and a report."""
    from glacierxr.demo import run_demo

    report = run_demo(out, quick=quick)
    click.echo(f"report: {report}")


def main(argv=None) -> int:
    """Entry point of the ``glacierxr`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="glacierxr", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except (GlacierXRError, FileNotFoundError, PermissionError, FileExistsError) as error:
        if debug:
            raise
        click.echo(f"Error: {error}", err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
