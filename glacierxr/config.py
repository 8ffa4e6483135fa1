"""Run configuration: one TOML file reproduces a whole run.

A configuration has one table per stage. Unknown tables or keys are errors (a typo must not be
silently ignored), and every value is type-checked against the defaults below.

.. code-block:: toml

    [data]
    catalog = "demo-out/sample/catalog.json"   # a STAC API URL or a static catalog.json
    glacier = "parvati"                         # or bbox = [west, south, east, north]
    datetime = "2013-01-01/2021-01-01"
    max_cloud = 20.0

    [preprocess]
    months = 3

    [model]
    name = "convlstm"
    hidden_channels = 16                        # any keyword of the model's constructor

    [train]
    max_epochs = 20

    [velocity]
    min_days = 5.0                              # pairs 5 to 64 days apart ...
    max_days = 64.0
    min_clear = 0.5                             # ... whose scenes are both at least half clear

Files are parsed with :mod:`tomllib` (no code is executed). A relative ``catalog`` path is
looked up beside the config file first, then in the current directory, so a config written
next to its data works from anywhere. Keys whose default is nothing (``bbox``, ``epsg``,
``limit`` …) are type-checked too: ``bbox`` is a list of four numbers, ``epsg`` an integer.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glacierxr._validate import require_choice
from glacierxr.errors import ConfigError
from glacierxr.landsat import PC_STAC_API

__all__ = [
    "DataConfig",
    "LoadConfig",
    "PreprocessConfig",
    "PatchConfig",
    "ModelConfig",
    "TrainConfig",
    "PredictConfig",
    "VelocityConfig",
    "RunConfig",
    "load_config",
]


@dataclass
class DataConfig:
    """Where the scenes come from (arguments of :func:`glacierxr.search`)."""

    catalog: str = PC_STAC_API
    glacier: str | None = None
    bbox: list[float] | None = None
    datetime: str = "2013-01-01/2021-01-01"
    max_cloud: float = 20.0
    collection: str = "landsat-c2-l2"
    platforms: list[str] = field(default_factory=lambda: ["landsat-8", "landsat-9"])
    limit: int | None = None


@dataclass
class LoadConfig:
    """Arguments of :func:`glacierxr.load`."""

    resolution: float = 30.0
    epsg: int | None = None
    chunk_size: int = 1024
    max_pixels: int = 500_000_000


@dataclass
class PreprocessConfig:
    """The ``.glacier`` chain: mask → NDSI → snow mask → fill → align → composites."""

    max_missing: float = 0.5
    threshold: float = 0.3
    binary: bool = False
    fill_size: int = 5
    fill_max_iter: int = 10
    fill_max_distance: float = 4.0  # px; deeper holes are left to the composites (fill_gaps)
    align: bool = True
    max_shift: float = 5.0
    months: int = 3
    how: str = "mean"


@dataclass
class PatchConfig:
    """Arguments of :class:`glacierxr.ml.PatchSequences`."""

    input_steps: int = 4
    target_steps: int = 4
    patch: int = 50
    stride: int = 10
    split: str = "temporal"
    val_fraction: float = 0.15
    test_fraction: float = 0.15


#: Baselines a model trained by ``glacierxr train`` can forecast a residual on, and the context
#: it can be shown (:mod:`glacierxr.ml.models.residual`; a test pins them to its names).
#: ``"auto"``: ``"snow_state"`` where the training periods are enough for the snow-state model
#: (at least 12), else ``"anomaly_persistence"`` (:func:`glacierxr.pipeline.resolve_residual`).
MODEL_RESIDUALS = ("auto", "none", "climatology", "anomaly_persistence", "snow_state")
MODEL_CONTEXTS = ("climatology", "scene_anomaly")


#: What a model is shown besides its patch when ``context`` is not given (measured better on the
#: demo and in benchmarks/skill.py; see docs/benchmarks.md).
DEFAULT_CONTEXT = ("climatology", "scene_anomaly")


@dataclass
class ModelConfig:
    """A model of the registry, its constructor keywords (any extra key goes to the model), and
    the baseline it forecasts a residual on (``residual``, with ``context``; ``"none"``: the
    plain model). By default (``"auto"``) a model forecasts a correction to the snow-state model
    where the series is long enough for it, else to damped anomaly persistence, and sees the
    climatology and the scene-wide anomaly (``context`` left out: those two, or none with
    ``residual = "none"``)."""

    name: str = "convlstm"
    params: dict[str, Any] = field(default_factory=dict)
    residual: str = "auto"
    context: list[str] | None = None

    def __post_init__(self) -> None:
        require_choice(self.residual, MODEL_RESIDUALS, name="[model] residual")
        if self.context is None:
            self.context = [] if self.residual == "none" else list(DEFAULT_CONTEXT)
        if not isinstance(self.context, (list, tuple)) or len(set(self.context)) != len(self.context):
            raise ConfigError(f"[model] context = {self.context!r}: a list of distinct names from {MODEL_CONTEXTS}.")
        for name in self.context:
            require_choice(name, MODEL_CONTEXTS, name="[model] context")
        if self.context and self.residual == "none":
            raise ConfigError("[model] context needs a residual baseline (residual = \"climatology\" or "
                              "\"anomaly_persistence\"): with residual = \"none\" there is no climatology to show.")
        self.context = list(self.context)


@dataclass
class TrainConfig:
    """Arguments of :class:`glacierxr.ml.Trainer`."""

    max_epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int | None = 5
    grad_clip: float = 1.0
    seed: int = 0
    max_batches_per_epoch: int | None = None


@dataclass
class PredictConfig:
    """Arguments of :func:`glacierxr.ml.predict.predict`."""

    steps: int = 4
    overlap: int | None = None
    batch_size: int = 64
    blend: str = "hann"


@dataclass
class VelocityConfig:
    """The velocity stage: pairs (:func:`glacierxr.velocity.select_pairs`) and flow's settings.

    ``None`` keeps the default of the function: ``band`` is ``"pan"`` where the scenes have a
    panchromatic band, else ``"green"``; ``method``, ``spacing`` and ``winsize`` (Farnebäck's
    window) are those of :func:`glacierxr.flow.flow`.  ``outlines`` is a GeoJSON file of glacier outlines (stable
    ground lies outside them).  ``composite`` is a pandas period alias (``"YS"``, ``"QS-DEC"``):
    when set, the robust composite is written beside the cube.
    """

    band: str | None = None
    min_days: float = 5.0
    max_days: float = 64.0
    min_clear: float = 0.5
    months: list[int] | None = None
    method: str | None = None
    spacing: float | None = None
    winsize: int | None = None
    outlines: str | None = None
    composite: str | None = None


_SECTIONS = {
    "data": DataConfig,
    "load": LoadConfig,
    "preprocess": PreprocessConfig,
    "patches": PatchConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "predict": PredictConfig,
    "velocity": VelocityConfig,
}


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


_OPTIONAL = {  # what a key whose default is None must hold when given
    "int | None": (int, "an integer"),
    "float | None": (float, "a number"),
    "str | None": (str, "a string"),
    "list[float] | None": (list, "a list of numbers"),
    "list[str] | None": (list, "a list of strings"),
}
_EXAMPLES = {"bbox": "bbox = [76.4, 32.0, 77.6, 32.4]", "epsg": "epsg = 32643"}


def _check_optional(section: str, key: str, value: Any, annotation: str) -> Any:
    """Type-check a value whose default is None, from the field's annotation."""
    kind, words = _OPTIONAL.get(str(annotation), (None, ""))
    if kind is None or value is None:
        return value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is list:
        inner = (int, float) if "float" in str(annotation) else str
        ok = isinstance(value, list) and all(
            isinstance(v, inner) and not isinstance(v, bool) for v in value
        )
    else:
        ok = isinstance(value, kind)
    if key == "bbox" and ok and len(value) != 4:
        ok, words = False, "four numbers [west, south, east, north]"
    if not ok:
        example = f" (e.g. {_EXAMPLES[key]})" if key in _EXAMPLES else ""
        raise ConfigError(
            f"[{section}] {key} = {value!r} has the wrong type: expected {words}{example}, or "
            "leave the key out."
        )
    return float(value) if kind is float else value


def _check_type(section: str, key: str, value: Any, default: Any, annotation: str = "") -> Any:
    if default is None:
        return _check_optional(section, key, value, annotation)
    if value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"[{section}] {key} = {value!r} has the wrong type: expected "
            f"{type(default).__name__} like the default {default!r}."
        )
    return value


@dataclass
class RunConfig:
    """A whole run: one attribute per stage."""

    data: DataConfig = field(default_factory=DataConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    velocity: VelocityConfig = field(default_factory=VelocityConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build a config from nested dicts, rejecting unknown tables and keys.

        Examples
        --------
        >>> RunConfig.from_dict({"train": {"max_epochs": 3}}).train.max_epochs
        3
        >>> RunConfig.from_dict({"train": {"max_epoch": 3}})
        Traceback (most recent call last):
        ...
        glacierxr.errors.ConfigError: config: unknown key 'max_epoch' in [train]. Did you mean 'max_epochs'? Valid keys: ...
        """
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a table of sections, got {type(raw).__name__}.")
        sections = {}
        for name, values in raw.items():
            if name not in _SECTIONS:
                raise ConfigError(
                    f"{source}: unknown section [{name}].{_suggest(name, _SECTIONS)} "
                    f"Valid sections: {', '.join(_SECTIONS)}."
                )
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{name}] must be a table of key = value lines.")
            klass = _SECTIONS[name]
            defaults = {f.name: f for f in dataclasses.fields(klass)}
            if klass is ModelConfig:
                values = dict(values)
                model_name = values.pop("name", ModelConfig.name)
                residual = values.pop("residual", ModelConfig.residual)
                context = values.pop("context", None)
                params = dict(values.pop("params", {}))
                params.update(values)
                sections[name] = ModelConfig(name=str(model_name), params=params, residual=residual, context=context)
                continue
            kwargs = {}
            for key, value in values.items():
                if key not in defaults:
                    raise ConfigError(
                        f"{source}: unknown key {key!r} in [{name}].{_suggest(key, defaults)} "
                        f"Valid keys: {', '.join(defaults)}."
                    )
                spec = defaults[key]
                default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
                kwargs[key] = _check_type(name, key, value, default, spec.type)
            sections[name] = klass(**kwargs)
        return cls(**sections)

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        """Read a TOML file (see the module docstring for its layout)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist. Check the path.")
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid TOML ({error}). Fix the syntax.") from error
        return _beside(cls.from_dict(raw, source=str(path)), path.parent)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dicts (``None`` values left out, as TOML has no null)."""
        out: dict[str, dict[str, Any]] = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            if isinstance(section, ModelConfig):
                out[name] = {"name": section.name, "residual": section.residual, "context": list(section.context),
                             **section.params}
            else:
                out[name] = {k: v for k, v in dataclasses.asdict(section).items() if v is not None}
        return out

    def to_toml(self) -> str:
        """Serialise to TOML text that :meth:`from_toml` reads back to an equal config.

        Examples
        --------
        >>> text = RunConfig().to_toml()
        >>> RunConfig.from_dict(tomllib.loads(text)) == RunConfig()
        True
        """
        lines = []
        for name, values in self.to_dict().items():
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
            lines.append("")
        return "\n".join(lines)


def _beside(config: RunConfig, folder: Path) -> RunConfig:
    """Resolve a relative local ``[data] catalog`` against the config file's folder when the
    file is there (so a config works from any directory); else keep it as given."""
    catalog = str(config.data.catalog)
    if "://" in catalog or Path(catalog).is_absolute():
        return config
    candidate = folder / catalog
    if candidate.exists():
        config.data.catalog = str(candidate)
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"Cannot write {value!r} ({type(value).__name__}) to TOML.")


def load_config(path: str | Path | None) -> RunConfig:
    """The config in ``path``, or the defaults when ``path`` is None."""
    return RunConfig() if path is None else RunConfig.from_toml(path)
