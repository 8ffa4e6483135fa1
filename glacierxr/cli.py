"""The ``glacierxr`` command.

Every subcommand has ``--help`` (with the defaults). User mistakes (a bad path, a file of the
wrong kind, an unknown model, a config with a typo, no scenes found, a full disk, an output
another run is writing) end in one line on stderr and exit code 2 — no traceback. Pass
``--debug`` before the subcommand to see the traceback anyway.

Outputs are never replaced unless ``--overwrite`` is given, and each output is locked while a
command writes it: a second command writing the same output at the same time fails at once.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from glacierxr.errors import GlacierXRError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: The models of ``glacierxr.ml.get_model`` (listed here so that --help needs no torch import).
MODELS = ("convlstm", "lstm", "transformer", "unet", "vit")
#: Columns of the terminal view of ``glacierxr evaluate`` (``--out`` gets every column).
COMPACT_COLUMNS = ("model", "lead", "mse", "mae", "iou")


def _default(section: str, key: str) -> str:
    """The config default of ``[section] key``, for --help."""
    from glacierxr.config import RunConfig

    value = getattr(getattr(RunConfig(), section), key)
    return f"{value}; config [{section}] {key}"


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


# ------------------------------------------------------------------------------------------
# what the inputs are
# ------------------------------------------------------------------------------------------
def _input_error(path: Path, option: str, found: str, expected: str, maker: str) -> GlacierXRError:
    from glacierxr.errors import ConfigError

    return ConfigError(f"{option} {str(path)!r} is {found}, not {expected}. Make one with {maker}.")


def _kind_of_file(path: Path) -> str:
    """A short description of what ``path`` holds, from its first bytes."""
    if not path.exists():
        return "missing"
    if path.is_dir():
        if (path / "zarr.json").is_file() or (path / ".zgroup").is_file():
            return "zarr"
        if (path / "model.pt").is_file():
            return "a training run folder"
        return "a folder"
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK"):
        return "checkpoint"  # torch.save writes a zip archive
    if head.startswith((b"CDF\x01", b"CDF\x02", b"\x89HDF")):
        return "netcdf"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00")):
        return "a GeoTIFF"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file"
    return "a file of unknown kind"


def _composites_input(path: str, option: str = "--data") -> str:
    from glacierxr.errors import ConfigError

    kind = _kind_of_file(Path(path))
    if kind == "missing":
        raise ConfigError(f"No composites at {path!r}. Run `glacierxr prepare` first or fix the path.")
    if kind not in ("zarr", "netcdf"):
        hint = " (pass its model.pt as --checkpoint)" if kind in ("checkpoint", "a training run folder") else ""
        raise _input_error(Path(path), option, kind + hint, "composites (a Zarr store or NetCDF file)",
                           "`glacierxr prepare --out composites.zarr`")
    return path


def _scenes_input(path: str | None) -> str | None:
    """``velocity --data``: a cube of scenes (Zarr or NetCDF); None means "use the catalog"."""
    from glacierxr.errors import ConfigError

    kind = "zarr" if path is None else _kind_of_file(Path(path))
    if kind == "missing":
        raise ConfigError(f"No scenes at {path!r}. Fix the path, or pass --catalog instead of --data.")
    if kind not in ("zarr", "netcdf"):
        raise _input_error(Path(path), "--data", kind, "a cube of scenes (a Zarr store or NetCDF file)",
                           "glacierxr.io.write(glacierxr.load(items), 'scenes.zarr'), or pass --catalog")
    return path


def _checkpoint_input(path: str, option: str = "--checkpoint") -> str:
    from glacierxr.errors import CheckpointError

    candidate = Path(path)
    kind = _kind_of_file(candidate)
    if kind == "a training run folder":
        return str(candidate / "model.pt")
    if kind == "missing":
        raise CheckpointError(f"No checkpoint at {path!r}. Check the path, or train first with `glacierxr train`.")
    if kind != "checkpoint":
        raise CheckpointError(f"{option} {path!r} is {'composites' if kind in ('zarr', 'netcdf') else kind}, "
                              "not a model checkpoint. Make one with `glacierxr train --out RUN` "
                              "and pass RUN/model.pt.")
    return path


def _catalog_input(value: str | None) -> str | None:
    """A STAC API URL passes; a local path must be a STAC catalog/collection JSON file."""
    from glacierxr.errors import CatalogError

    if value is None or re.match(r"^[a-z][a-z0-9+.-]*://", value, re.I):
        return value
    path = Path(value)
    if path.is_dir() and (path / "catalog.json").is_file():
        return str(path / "catalog.json")
    if not path.is_file():
        return value  # search() says that it does not exist
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError):
        document = None
    if not (isinstance(document, dict) and "stac_version" in document):
        raise CatalogError(f"--catalog {value!r} is {_kind_of_file(path)}, not a STAC catalog JSON. "
                           "Pass a STAC API URL, or make a catalog with `glacierxr sample`.")
    return value


def _refuse_existing(out: str, overwrite: bool) -> None:
    """Fail before any work when ``out`` exists (the writer checks again when it writes)."""
    if Path(out).exists() and not overwrite:
        from glacierxr.io import OutputExistsError

        raise OutputExistsError(f"{out!r} already exists. Pass --overwrite to replace it, or choose another --out.")


def _echo_query(data) -> None:
    """Say which scenes are asked for, defaults included (stdout: stderr is for errors)."""
    where = f"bbox {list(data.bbox)}" if data.bbox else (f"glacier {data.glacier}" if data.glacier else "any place")
    cloud = "no cloud limit" if data.max_cloud is None else f"cloud cover <= {data.max_cloud:g} %"
    from glacierxr._remote import redact

    click.echo(f"searching {redact(str(data.catalog))}: {where}, {data.datetime or 'any date'}, {cloud}, "
               f"{data.collection} ({', '.join(data.platforms)})")


# ------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------
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
    help="TOML file with the run configuration (its tables: docs/cli.md, or the demo's config.toml); "
         "options given here override it.",
)
catalog_option = click.option(
    "--catalog", default=None, show_default=_default("data", "catalog"),
    help="STAC API URL, or a static catalog.json (e.g. from `glacierxr sample`).",
)
max_cloud_option = click.option(
    "--max-cloud", type=float, default=None, show_default=_default("data", "max_cloud"),
    help="Largest scene cloud cover, in percent.",
)
composites_option = click.option(
    "--data", type=click.Path(), required=True, help="Composites from `glacierxr prepare`."
)
trained_option = click.option(
    "--checkpoint", type=click.Path(), required=True, help="model.pt from `glacierxr train`."
)


def where_options(command):
    """The options saying which scenes to search: --config, --catalog, --glacier, --bbox, --datetime.

    The command receives ``config_path, catalog, glacier, bbox, datetime_``; pass the last four
    to :func:`_where` for the ``[data]`` config overrides.
    """
    for option in reversed((
        config_option,
        catalog_option,
        click.option("--glacier", default=None, help="A named region, e.g. parvati (see `glacierxr regions`)."),
        click.option("--bbox", default=None, help="west,south,east,north in degrees."),
        click.option("--datetime", "datetime_", default=None, show_default=_default("data", "datetime"),
                     help="A period start/end, e.g. 2013-01-01/2021-01-01 (a day, month or year works too)."),
    )):
        command = option(command)
    return command


def run_options(what: str):
    """--out, --resume and --overwrite of a training run folder; ``what`` names the run in --help."""

    def decorate(command):
        command = click.option(
            "--overwrite", is_flag=True,
            help="Replace the run in --out (only once the new run has written its first checkpoint).",
        )(command)
        command = click.option(
            "--resume", is_flag=True, help=f"Continue the {what} in --out from its last checkpoint."
        )(command)
        return click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder.")(command)

    return decorate


epochs_option = click.option("--epochs", type=int, default=None, show_default=_default("train", "max_epochs"))


def _where(catalog, glacier, bbox, datetime_) -> dict:
    """The ``[data]`` config overrides of :func:`where_options` (checked and parsed)."""
    return {"data__catalog": _catalog_input(catalog), "data__glacier": glacier, "data__bbox": _bbox(bbox),
            "data__datetime": datetime_}


@cli.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False), default="glacierxr-sample", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Another seed gives another glacier.")
@click.option("--width", type=int, default=256, show_default=True)
@click.option("--height", type=int, default=256, show_default=True)
@click.option("--start", default="2013-04-01", show_default=True)
@click.option("--end", default="2021-04-01", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a sample already in --out.")
def sample(out, seed, width, height, start, end, overwrite):
    """Write the embedded synthetic sample (COGs + STAC catalog + truth)."""
    from glacierxr._safety import output_lock, storage_errors
    from glacierxr.sample import write_catalog

    with output_lock(out, create_parent=True), storage_errors(out):  # GDAL's disk-full errors too
        path = write_catalog(
            out, seed=seed, width=width, height=height, start=start, end=end, overwrite=overwrite, progress=True
        )
    click.echo(str(path))


@cli.command(context_settings=CONTEXT)
@where_options
@max_cloud_option
@click.option("--limit", type=int, default=None, help="At most this many scenes.")
def search(config_path, catalog, glacier, bbox, datetime_, max_cloud, limit):
    """Search scenes and print them as a table."""
    from glacierxr.pipeline import find_scenes

    config = _config(
        config_path, **_where(catalog, glacier, bbox, datetime_), data__max_cloud=max_cloud, data__limit=limit
    )
    _echo_query(config.data)
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
@where_options
@max_cloud_option
@click.option("--resolution", type=float, default=None, show_default=_default("load", "resolution"),
              help="Pixel size in metres.")
@click.option("--months", type=int, default=None, show_default=_default("preprocess", "months"),
              help="Composite length in months.")
@click.option("--out", type=click.Path(), required=True, help="Output Zarr store (e.g. composites.zarr).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (once the new one is complete).")
def prepare(config_path, catalog, glacier, bbox, datetime_, max_cloud, resolution, months, out, overwrite):
    """Catalog → masked, gap-filled, aligned snow-mask composites in Zarr."""
    from glacierxr._safety import output_lock
    from glacierxr.pipeline import prepare as run_prepare

    config = _config(
        config_path, **_where(catalog, glacier, bbox, datetime_), data__max_cloud=max_cloud,
        load__resolution=resolution, preprocess__months=months,
    )
    with output_lock(out):
        _refuse_existing(out, overwrite)
        _echo_query(config.data)
        click.echo(str(run_prepare(config, out, overwrite=overwrite)))


def _train_command(data, out, config, *, resume=False, overwrite=False, init=None, freeze=()):
    from glacierxr.pipeline import open_composites, train

    composites = open_composites(_composites_input(data))
    _, history = train(composites, config, out, resume=resume, overwrite=overwrite, init_checkpoint=init,
                       freeze=freeze)
    last = history.iloc[-1]
    click.echo(
        f"trained {len(history)} epochs; val_loss {last.get('val_loss', float('nan')):.5f}; "
        f"model: {Path(out) / 'model.pt'}"
    )


@cli.command(context_settings=CONTEXT)
@config_option
@composites_option
@click.option("--model", "model_name", default=None, metavar="[" + "|".join(MODELS) + "]",
              show_default=_default("model", "name"), help="The forecasting model.")
@epochs_option
@click.option("--batch-size", type=int, default=None, show_default=_default("train", "batch_size"))
@run_options("run")
def train(config_path, data, model_name, epochs, batch_size, out, resume, overwrite):
    """Train a forecasting model on patch sequences of the composites."""
    config = _config(config_path, model__name=model_name, train__max_epochs=epochs, train__batch_size=batch_size)
    _train_command(data, out, config, resume=resume, overwrite=overwrite)


@cli.command(context_settings=CONTEXT)
@config_option
@click.option("--checkpoint", type=click.Path(), required=True, help="model.pt trained on another glacier.")
@click.option("--data", type=click.Path(), required=True, help="Composites of the new glacier.")
@click.option("--freeze", multiple=True, help="Parameter-name prefix to keep fixed (repeatable).")
@epochs_option
@click.option("--lr", type=float, default=None, show_default=_default("train", "lr"))
@run_options("fine-tuning run")
def finetune(config_path, checkpoint, data, freeze, epochs, lr, out, resume, overwrite):
    """Fine-tune a trained model on another glacier's composites."""
    config = _config(config_path, train__max_epochs=epochs, train__lr=lr)
    _train_command(data, out, config, resume=resume, overwrite=overwrite, init=_checkpoint_input(checkpoint),
                   freeze=tuple(freeze))


@cli.command(context_settings=CONTEXT)
@config_option
@composites_option
@trained_option
@click.option("--steps", type=int, default=None, show_default=_default("predict", "steps"), help="Periods to forecast.")
@click.option("--out", type=click.Path(), required=True,
              help="Output: .zarr, .nc, or .tif (one GeoTIFF, one band per lead time).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (once the new one is complete).")
def predict(config_path, data, checkpoint, steps, out, overwrite):
    """Forecast the next periods of the whole scene and write them."""
    from dask.diagnostics import ProgressBar

    from glacierxr._safety import output_lock
    from glacierxr.io import write
    from glacierxr.ml.checkpoint import load_model
    from glacierxr.pipeline import forecast, open_composites

    config = _config(config_path, predict__steps=steps)
    with output_lock(out):
        _refuse_existing(out, overwrite)
        composites = open_composites(_composites_input(data))
        result = forecast(composites, load_model(_checkpoint_input(checkpoint)), config)
        with ProgressBar():  # write() computes; show how far it is
            path = write(result, out, overwrite=overwrite)
    click.echo(str(path))


def _compact(table):
    """The columns worth a terminal: model, lead, errors, IoU and the point skills."""
    skills = [c for c in table.columns if c.startswith("skill_vs_") and not c.endswith(("_low", "_high"))]
    return table[[c for c in COMPACT_COLUMNS if c in table.columns] + skills]


@cli.command(context_settings=CONTEXT)
@config_option
@composites_option
@trained_option
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the full table (confidence bounds included): Markdown, or CSV for a .csv name.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def evaluate(config_path, data, checkpoint, split, out, overwrite):
    """Score a model and the baselines (persistence, seasonal-naive, climatology).

    The terminal shows a compact table; --out gets every column.
    """
    from glacierxr._safety import output_lock
    from glacierxr.evaluate import to_markdown
    from glacierxr.ml.checkpoint import atomic_write_text, load_model
    from glacierxr.pipeline import evaluate_run, open_composites

    if out:
        _refuse_existing(out, overwrite)
    config = _config(config_path)
    composites = open_composites(_composites_input(data))
    table = evaluate_run(composites, load_model(_checkpoint_input(checkpoint)), config, split=split)
    click.echo(to_markdown(_compact(table)))
    if out:
        with output_lock(out):
            _refuse_existing(out, overwrite)
            text = table.to_csv(index=False) if Path(out).suffix == ".csv" else to_markdown(table) + "\n"
            atomic_write_text(text, out)
        click.echo(f"full table ({len(table.columns)} columns): {out}")


@cli.command(context_settings=CONTEXT)
@where_options
@click.option("--data", type=click.Path(), default=None,
              help="A cube of scenes (Zarr or NetCDF, e.g. written by glacierxr.io.write) instead of a catalog.")
@click.option("--band", default=None, help="Band to track [default: pan where the scenes have it, else green].")
@click.option("--resolution", type=float, default=None, show_default=_default("load", "resolution"),
              help="Pixel size in metres of the loaded scenes (15 for Landsat's panchromatic band).")
@click.option("--min-days", type=float, default=None, show_default=_default("velocity", "min_days"),
              help="Shortest time between the two scenes of a pair.")
@click.option("--max-days", type=float, default=None, show_default=_default("velocity", "max_days"),
              help="Longest time between the two scenes of a pair.")
@click.option("--min-clear", type=float, default=None, show_default=_default("velocity", "min_clear"),
              help="Least fraction of valid pixels of both scenes.")
@click.option("--method", default=None,
              help="ncc (feature tracking of image chips) or farneback (dense optical flow) [default: ncc].")
@click.option("--spacing", type=float, default=None,
              help="Output posting in metres of ncc [default: 120, as ITS_LIVE].")
@click.option("--composite", "period", default=None,
              help="Also write the robust composite per period (YS, QS-DEC, 6MS ...) beside --out.")
@click.option("--out", type=click.Path(), required=True, help="Output velocity cube: .zarr or .nc.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (once the new one is complete).")
def velocity(config_path, catalog, glacier, bbox, datetime_, data, band, resolution, min_days, max_days,
             min_clear, method, spacing, period, out, overwrite):
    """Surface velocity of every usable pair of scenes → an ITS_LIVE-like velocity cube."""
    from glacierxr._safety import output_lock
    from glacierxr.pipeline import velocity as run_velocity

    config = _config(
        config_path, **_where(catalog, glacier, bbox, datetime_), load__resolution=resolution,
        velocity__band=band, velocity__min_days=min_days,
        velocity__max_days=max_days, velocity__min_clear=min_clear, velocity__method=method,
        velocity__spacing=spacing, velocity__composite=period,
    )
    with output_lock(out):
        _refuse_existing(out, overwrite)
        if data is None:
            _echo_query(config.data)
        path = run_velocity(config, out, data=_scenes_input(data), overwrite=overwrite)
    click.echo(str(path))
    if config.velocity.composite:
        from glacierxr.pipeline import velocity_composite_path

        click.echo(f"{velocity_composite_path(path)} (composite per {config.velocity.composite})")


@cli.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True)
@click.option("--quick", is_flag=True, help="Smaller sample and shorter training (for tests).")
def demo(out, quick):
    """The whole pipeline on the embedded sample: figures, forecast, metrics and a report."""
    from glacierxr.demo import run_demo

    run_demo(out, quick=quick)  # its last line names the report


# ------------------------------------------------------------------------------------------
# errors in the words of the command line
# ------------------------------------------------------------------------------------------
_FLAGS = {
    "overwrite": "--overwrite", "resume": "--resume", "max_cloud": "--max-cloud", "datetime": "--datetime",
    "bbox": "--bbox", "catalog": "--catalog", "glacier": "--glacier", "max_epochs": "--epochs",
    "batch_size": "--batch-size", "steps": "--steps", "months": "--months", "resolution": "--resolution",
    "min_days": "--min-days", "max_days": "--max-days", "min_clear": "--min-clear",
}
_CLI_WORDS = (
    (re.compile(r"\b(?:pass |with )?resume=False\b", re.I), "run without --resume"),
    (re.compile(r"\b(overwrite|resume)=True\b"), lambda m: _FLAGS[m.group(1)]),
    (re.compile(r"\bTrainer\(checkpoint_dir=\.\.\.\)"), "`glacierxr train --out RUN`"),
    (re.compile(r"\bTrainer\.from_checkpoint\(path, \.\.\.\) or fine_tune\(\.\.\.\)"), "`glacierxr finetune`"),
    (re.compile(r"\b(" + "|".join(_FLAGS) + r")=(?=[\w'\"(\[.-])"), lambda m: _FLAGS[m.group(1)] + " "),
)


def _config_keys() -> dict[str, str]:
    """``key`` -> ``[section] key`` for the config keys that have no flag."""
    import dataclasses

    from glacierxr.config import _SECTIONS

    keys = {}
    for section, klass in _SECTIONS.items():
        for field in dataclasses.fields(klass):
            if field.name not in _FLAGS and field.name not in ("name", "params"):
                keys.setdefault(field.name, f"[{section}] {field.name}")
    return keys


def _config_words(message: str) -> str:
    """``patch=8`` -> ``[patches] patch = 8 (in the --config file)``."""
    keys = _config_keys()
    value = r"(\[[^\]]*\]|\([^)]*\)|[\w.'\"-]*)"  # a list, a tuple, or a plain value
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, keys)) + r")=" + value)

    def word(match: re.Match) -> str:
        value = f" = {match.group(2)}" if match.group(2) else ""
        return f"{keys[match.group(1)]}{value} (in the --config file)"

    return pattern.sub(word, message)


def cli_words(message: str) -> str:
    """Rewrite the Python advice in a library message as command-line flags.

    Examples
    --------
    >>> cli_words("'x.zarr' already exists. Pass overwrite=True, or choose another path.")
    "'x.zarr' already exists. Pass --overwrite, or choose another path."
    >>> cli_words("Widen the search, e.g. max_cloud=50.")
    'Widen the search, e.g. --max-cloud 50.'
    >>> cli_words("Or pass platforms=('landsat-8',).")
    "Or pass [data] platforms = ('landsat-8',) (in the --config file)."
    >>> cli_words("Pass a coarser resolution, or raise max_pixels= if you mean it.")
    'Pass a coarser resolution, or raise [load] max_pixels (in the --config file) if you mean it.'
    """
    for pattern, replacement in _CLI_WORDS:
        message = pattern.sub(replacement, message)
    return _config_words(message)


def _one_line(error: BaseException) -> str:
    """The error as one line, tokens removed from any URL in it."""
    from glacierxr._remote import redact

    text = redact(" ".join(str(error).split()))
    return cli_words(text) if isinstance(error, GlacierXRError) else f"{type(error).__name__}: {text}"


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
    except (GlacierXRError, OSError) as error:
        if debug:
            raise
        from glacierxr._safety import storage_error

        if not isinstance(error, GlacierXRError):
            error = storage_error(error, getattr(error, "filename", None) or ".")
        click.echo(f"Error: {_one_line(error)}", err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
