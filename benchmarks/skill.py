"""Benchmark: is a model worth more than the best naive forecast? Sample seeds with an oracle, and a real series.

Sample (``gx.sample.write_catalog(dynamics="memory")``: snow-line anomalies that persist for
months, see :class:`glacierxr.sample.SnowProcess`; 30 years of monthly composites in full mode,
the length of a Landsat record such as the real series below: with 12 years there was too little
to learn from, e.g. seed 0's ConvLSTM residual on anomaly persistence scored 0.0131-0.0133 against
the baseline's 0.0129 on the test years, with 30 years 0.0209 against 0.0225), on several seeds, each run through the whole
chain ``search(max_cloud=20)`` → ``load`` → ``mask`` → ``ndsi`` → ``snow_mask(0.3)`` →
``fill_gaps`` → ``align`` → ``monthly(1)``; monthly composites, cached under
``benchmarks/_work/skill-v2[-quick]/``. ``PatchSequences`` (4 → 4 months, temporal split: the
last 25 % of the months ``test``, the 15 % before them ``val``).

Forecasters:

* the four baselines of :func:`glacierxr.evaluate.evaluate` (persistence, seasonal-naive,
  climatology, damped anomaly persistence, the damping fitted on the training months);
* the statistical :class:`~glacierxr.ml.snowstate.SnowStateModel` (one regional snow state
  forecast by regression, a learnt response of each pixel to it, a local level; fitted by least
  squares on the training months; the months of local level, 12, 24 or 36, chosen on val);
* every (model, residual) pair: each network of the zoo at small sizes, trained with the
  :class:`~glacierxr.ml.train.Trainer` on the raw masks (``none``) or on the residual of
  damped anomaly persistence or of the snow-state model
  (:class:`~glacierxr.ml.models.residual.ResidualForecaster`), with or without context
  (``+climatology+scene_anomaly``: the climatology of the input and target months and the
  scene-wide anomaly of each input month shown to the model), its correction to the baseline
  optionally shrunk (× 0.25, 0.5, 0.75 or 1). The **best model** is the forecaster (model,
  residual, shrinkage, or the snow-state model), or the mean of the 3 or 5 best of them, with
  the lowest MSE on the ``val`` split; only it is scored on ``test``;
* the **oracle** (sample only): :func:`glacierxr.sample.oracle_forecast` (the conditional
  expectation of each future month's true snow cover given the true process state at the issue
  month), mapped to the composite's NDSI scale by a per-pixel linear fit of the composites on the
  true snow cover over the training months.

Scores (test split, same windows and pixels for all): skill = 1 − MSE / MSE of the **best
baseline** (lowest test MSE of the four), 95 % paired bootstrap intervals (sample: 16 × 16 px
spatial blocks; real series: years of issue), and the fraction of achievable skill
``(MSE_best_baseline − MSE_model) / (MSE_best_baseline − MSE_oracle)``.

Real series: ``../shared/data/yatsm_landsat_sr`` (447 Landsat 4/5/7 dates, 1984-2013, 5 × 5 px
of the Colorado Park Range, Fmask) → QA mask → NDSI → snow mask → monthly composites (gaps
interpolated) → the 25 pixels as 25 one-pixel series (``patch=1``), same protocol.

Outputs: ``benchmarks/skill_summary.json`` (schema of issue 12), ``benchmarks/skill_table.md``
(``*_quick.*`` with ``--quick``), and JSON lines for ``benchmarks/run.py``.

    python benchmarks/skill.py --quick   # 48 x 48 px, 8 years, 2 models: a few minutes
    python benchmarks/skill.py --jobs 2  # 64 x 64 px, 30 years, 5 models x 4 residual options (~30 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUN_TIMEOUT_S = 3600
#: The residual of damped anomaly persistence with the model shown the climatology (of the input
#: and target months) and the scene-wide anomaly of each input month (ResidualForecaster context).
CONTEXT_VARIANT = "anomaly_persistence+climatology+scene_anomaly"
#: The residual of the statistical snow-state model (glacierxr.ml.snowstate), with the same context.
SNOW_STATE_CONTEXT = "snow_state+climatology+scene_anomaly"

PRESETS = {
    "quick": dict(size=48, years=8, seeds=(0, 1, 2), patch=16, stride=8, epochs=3, batches=15,
                  models=("convlstm", "unet"), residuals=("none", CONTEXT_VARIANT, "snow_state"),
                  real_models=("convlstm",), n_resamples=200),
    "full": dict(size=64, years=30, seeds=(0, 1, 2), patch=16, stride=8, epochs=10, batches=150,
                 models=("convlstm", "lstm", "transformer", "unet", "vit"),
                 residuals=("none", CONTEXT_VARIANT, "snow_state", SNOW_STATE_CONTEXT),
                 real_models=("convlstm", "lstm"), n_resamples=1000),
}
START = "2013-01-01"
VAL_FRACTION, TEST_FRACTION = 0.15, 0.25
STEPS_IN = STEPS_OUT = 4
BATCH, LR = 32, 3e-3
BASELINES = ("persistence", "seasonal_naive", "climatology", "anomaly_persistence")
SHRINKAGE = (0.25, 0.5, 0.75, 1.0)
#: Months of local level of the snow-state model tried on val (one, two, three years).
SNOW_STATE_LEVELS = (12, 24, 36)
#: Sizes of the ensembles (mean of the k best forecasters on val) that compete with single models.
ENSEMBLE_SIZES = (3, 5)


def model_sizes(patch: int) -> dict[str, dict]:
    """Small constructor arguments (dropout off: short training)."""
    return {
        "convlstm": dict(hidden_channels=(8,), dropout=0.0),
        "lstm": dict(height=patch, width=patch, hidden_size=64, embedding_size=64, dropout=0.0),
        "transformer": dict(d_model=32, num_heads=4, encoder_layers=1, decoder_layers=1, feedforward_size=64,
                            dropout=0.0),
        "unet": dict(base_channels=8, depth=2, dropout=0.0),
        "vit": dict(d_model=32, depth=2, num_heads=4, mlp_size=64, dropout=0.0),
    }


def emit(metric: str, value, unit: str, **extra) -> None:
    print(json.dumps({"benchmark": "skill", "metric": metric, "value": value, "unit": unit, **extra}), flush=True)


def log(message: str) -> None:
    print(f"[skill] {message}", file=sys.stderr, flush=True)


def r(value, digits: int = 5):
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def sample_composites(work: Path, seed: int, size: int, years: int):
    """Monthly snow-mask composites of a memory sample, and its truth (cached as NetCDF)."""
    import xarray as xr

    import glacierxr as gx

    end = f"{int(START[:4]) + years - 1}-12-31"
    process = dataclasses.asdict(gx.sample.SnowProcess())  # a new process invalidates the cache
    settings = dict(seed=seed, size=size, start=START, end=end, dynamics="memory", months=1, version=2,
                    process=process)
    folder = work / f"seed{seed}"
    cached, catalog = folder / "composites.nc", folder / "sample" / "catalog.json"
    if cached.exists() and catalog.exists():
        da = xr.open_dataarray(cached).load()
        if json.loads(da.attrs.get("skill_settings", "{}")) == settings:
            return da, gx.sample.open_truth(catalog)
    started = time.perf_counter()
    gx.sample.write_catalog(catalog.parent, seed=seed, width=size, height=size, start=START, end=end,
                            dynamics="memory", overwrite=True)
    items = gx.search(catalog=catalog, datetime=None, max_cloud=20)
    cube = gx.load(items, resolution=30)
    snow = cube.glacier.mask().glacier.ndsi().glacier.snow_mask(threshold=0.3).glacier.fill_gaps()
    snow = snow.chunk({"y": -1, "x": -1}).glacier.align().glacier.monthly(months=1).compute()
    snow = _tidy(snow, settings)
    snow.to_netcdf(cached)
    log(f"seed {seed}: {len(items)} scenes -> {snow.sizes['time']} monthly composites "
        f"in {time.perf_counter() - started:.0f} s")
    return snow, gx.sample.open_truth(catalog)


def _tidy(snow, settings: dict):
    snow.attrs["months"] = 1
    snow.attrs["skill_settings"] = json.dumps(settings)
    keep = [c for c in ("spatial_ref",) if c in snow.coords]
    snow = snow.reset_coords([c for c in snow.coords if c not in snow.dims and c not in keep], drop=True)
    snow.attrs = {k: v for k, v in snow.attrs.items() if isinstance(v, (str, int, float))}
    return snow.astype(np.float32)


def real_composites():
    """Monthly NDSI snow-mask composites of the YATSM series (None when the data is absent)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from yatsm_data import load_yatsm

    import glacierxr  # noqa: F401  (registers the accessor)

    data = ROOT.parent / "shared" / "data" / "yatsm_landsat_sr"
    if not data.is_dir():
        log(f"real series skipped: {data} not found")
        return None
    cube = load_yatsm(data, HERE / "_work")
    cube = cube[["green", "swir16", "qa_pixel"]].reset_coords(drop=True)
    snow = cube.glacier.mask().glacier.ndsi().glacier.snow_mask(threshold=0.3)
    snow = snow.glacier.monthly(months=1).compute()
    return _tidy(snow, dict(series="yatsm_p035r032"))


# --------------------------------------------------------------------------------------------
# models: every (model, residual) pair, chosen on val
# --------------------------------------------------------------------------------------------
def fit_variants(ds, preset: dict, model_names, seed: int):
    """Fit every forecaster; keep the one (or the mean of the k best) of lowest val MSE.

    The candidates are the statistical :class:`~glacierxr.ml.snowstate.SnowStateModel`, each
    (network, residual, shrinkage) — the shrinkage ``lam`` scales the network's correction to its
    baseline (``baseline + lam * (forecast - baseline)``, ``lam`` in SHRINKAGE) — and the mean of
    the ``k`` best of them on val (``k`` in ENSEMBLE_SIZES): every setting is chosen on val only.
    """
    from glacierxr.evaluate import window_arrays
    from glacierxr.ml.models.residual import forecast_arrays, residual_scaling

    arrays = {s: window_arrays(ds, split=s) for s in ("train", "val", "test")}
    level, snow_state = _snow_state_on_val(ds, arrays["val"])
    for split, values in arrays.items():
        values["snow_state"] = snow_state.window_forecasts(ds, split)
    scale, offset = residual_scaling(arrays["train"])
    val_forecast = arrays["val"]["snow_state"].astype(np.float64)
    members = [(masked_mse(val_forecast, arrays["val"]), f"snow_state(level={level})",
                lambda a: a["snow_state"].astype(np.float64), val_forecast)]  # (val MSE, label, forecast fn, val forecast)
    for name in model_names:
        for residual in preset["residuals"]:
            model, seconds = train_one(name, residual, arrays, scale, offset, preset, ds.patch, seed)
            forecast = forecast_arrays(model, arrays["val"])
            base = _base(arrays["val"], residual, offset)
            scores = {lam: masked_mse(_shrink(base, forecast, lam), arrays["val"]) for lam in SHRINKAGE}
            lam = min(scores, key=scores.get)
            label = f"{name}+{residual}" + ("" if lam == 1.0 else f"@{lam:g}")
            members.append((scores[lam], label, _network_forecast(model, residual, lam, offset),
                            _shrink(base, forecast, lam)))
            log(f"  {label}: val MSE {scores[lam]:.5f} (unshrunk {scores[1.0]:.5f}; {seconds:.0f} s)")
    members.sort(key=lambda member: member[0])
    candidates = [(m[0], m[1], [m]) for m in members]
    for k in ENSEMBLE_SIZES:
        if 1 < k <= len(members):
            top = members[:k]
            candidates.append((masked_mse(np.mean([m[3] for m in top], axis=0), arrays["val"]),
                               f"mean of the {k} best on val", top))
    val_mse = {label: mse for mse, label, _ in candidates}
    _, label, chosen = min(candidates, key=lambda candidate: candidate[0])
    if len(chosen) > 1:
        log(f"  {label}: val MSE {val_mse[label]:.5f} ({', '.join(m[1] for m in chosen)})")
        label = f"mean({', '.join(m[1] for m in chosen)})"
    test_prediction = np.mean([m[2](arrays["test"]) for m in chosen], axis=0)
    return label, test_prediction, val_mse


def _snow_state_on_val(ds, val_arrays):
    """The SnowStateModel whose local level (months in SNOW_STATE_LEVELS) scores best on val."""
    from glacierxr.ml.snowstate import SnowStateModel

    scores = {}
    for level in SNOW_STATE_LEVELS:
        model = SnowStateModel(level=level).fit(ds)
        scores[level] = (masked_mse(model.window_forecasts(ds, "val").astype(np.float64), val_arrays), model)
        log(f"  snow_state(level={level}): val MSE {scores[level][0]:.5f}")
    level = min(scores, key=lambda key: scores[key][0])
    return level, scores[level][1]


def _shrink(base: np.ndarray, forecast: np.ndarray, lam: float) -> np.ndarray:
    """The forecast with its correction to ``base`` scaled by ``lam``."""
    return base + lam * (forecast - base)


def _network_forecast(model, residual: str, lam: float, offset: float):
    """``arrays -> forecast`` of a trained network, its correction shrunk like on val."""
    from glacierxr.ml.models.residual import forecast_arrays

    def forecast(arrays):
        base = _base(arrays, residual, offset)
        return _shrink(base, forecast_arrays(model, arrays), lam)
    return forecast


def _variant(residual: str) -> tuple[str, tuple[str, ...]]:
    """``"anomaly_persistence+climatology+scene_anomaly"`` -> ``("anomaly_persistence", ("climatology", "scene_anomaly"))``."""
    baseline, *context = residual.split("+")
    return baseline, tuple(context)


def _base(arrays, residual: str, offset: float) -> np.ndarray:
    from glacierxr.ml.models.residual import baseline_forecast

    return baseline_forecast(arrays, _variant(residual)[0], offset).astype(np.float64)


def train_one(name, residual, arrays, scale, offset, preset, patch, seed):
    import torch

    from glacierxr.ml.models import get_model
    from glacierxr.ml.models.residual import ResidualForecaster, inner_steps, residual_dataset
    from glacierxr.ml.train import Trainer

    torch.manual_seed(seed)
    baseline, context = _variant(residual)
    sizes = dict(model_sizes(patch)[name])
    if name == "unet":  # the only model of the zoo built for a fixed number of input frames
        sizes["input_steps"] = inner_steps(STEPS_IN, STEPS_OUT, context=context)
    inner = get_model(name, **sizes)
    model = ResidualForecaster(inner, input_steps=STEPS_IN, baseline=baseline, scale=scale, context=context,
                               offset=offset)
    data = {s: residual_dataset(arrays[s], baseline, scale, offset=offset, context=context) for s in ("train", "val")}
    trainer = Trainer(model, max_epochs=preset["epochs"], batch_size=BATCH, lr=LR, weight_decay=1e-4,
                      teacher_forcing=(0.5, 0.0), patience=None, restore_best=True, seed=seed, device="cpu",
                      progress=False, max_batches_per_epoch=preset["batches"], mixed_precision="no")
    started = time.perf_counter()
    trainer.fit(data["train"], data["val"])
    return model, time.perf_counter() - started


def masked_mse(prediction, arrays) -> float:
    valid = arrays["valid"]
    return float(np.mean((prediction[valid] - arrays["targets"][valid]) ** 2))


# --------------------------------------------------------------------------------------------
# oracle (sample)
# --------------------------------------------------------------------------------------------
def oracle_predictions(ds, snow, truth) -> tuple[np.ndarray, float]:
    """The oracle's forecast of every test window, on the composites' NDSI scale, and how much
    of what its observation map misses persists (:func:`_persistence` on the training months).

    ``alpha + beta * E[true snow cover | true state at issue] + gamma * ice``, where ``ice`` is
    the share of the month's scenes in which the pixel is glacier ice (from the truth's terminus
    position: the retreat over four months is known to well under a pixel). ``alpha``, ``beta``,
    ``gamma`` per pixel and a sub-pixel offset between the truth's frame and the aligned
    composites (the alignment reference is itself misregistered) are fitted on the training
    months only, by least squares of the composites on the truth of the same month.
    """
    import glacierxr as gx

    times = snow.time.to_index()
    train_t0 = np.unique(ds.split("train").windows["t0"].to_numpy())
    covered = np.unique((train_t0[:, None] + np.arange(STEPS_IN + STEPS_OUT)).ravel())
    cover = gx.sample.snow_cover(truth, times).values  # (time, y, x), NaN for a month without scene
    mean_cover = np.nanmean(cover[covered], axis=0)
    cover = np.where(np.isnan(cover), mean_cover, cover)
    ice = ice_cover(truth, times)
    offset, coefficients = _fit_observation(cover[covered], ice[covered], snow.values[covered])
    missed = snow.values[covered] - _observe(coefficients, _shift(cover[covered], offset), _shift(ice[covered], offset))
    windows = ds.split("test").windows[["t0", "y0", "x0"]].to_numpy()
    out = np.empty((len(windows), STEPS_OUT, ds.patch, ds.patch))
    cache = {}
    for i, (t0, y0, x0) in enumerate(windows):
        issue = t0 + STEPS_IN - 1
        if issue not in cache:
            target = slice(issue + 1, issue + 1 + STEPS_OUT)
            expected = gx.sample.oracle_forecast(truth, times[issue], times[target]).values
            expected = np.where(np.isnan(expected), mean_cover, expected)
            cache[issue] = _observe(coefficients, _shift(expected, offset), _shift(ice[target], offset))
        out[i] = cache[issue][:, y0 : y0 + ds.patch, x0 : x0 + ds.patch]
    return out, _persistence(missed[np.flatnonzero(np.diff(covered) == 1)], missed[np.flatnonzero(np.diff(covered) == 1) + 1])


def _persistence(now: np.ndarray, after: np.ndarray) -> float:
    """Lag-1 autocorrelation of ``(time, y, x)`` pairs per pixel, averaged with weights of the
    pixels' variance (where the composites carry most of what the oracle misses)."""
    ok = np.isfinite(now) & np.isfinite(after)
    a, b = np.where(ok, now, 0.0), np.where(ok, after, 0.0)
    power = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    weight = (a * a).sum(axis=0)
    correlation = np.where(power > 0, (a * b).sum(axis=0) / np.maximum(power, 1e-12), 0.0)
    return float((weight * correlation).sum() / max(weight.sum(), 1e-12))


def ice_cover(truth, times) -> np.ndarray:
    """Share of each month's scenes in which a pixel is glacier ice (formula of open_truth)."""
    half = truth.attrs["glacier_half_width_m"]
    across, along = truth["across_flow"].values, truth["along_flow"].values
    months = truth["time"].values.astype("datetime64[M]")
    out = np.zeros((len(times), *across.shape))
    for i, start in enumerate(np.asarray(times, dtype="datetime64[M]")):
        termini = truth["terminus_distance"].values[months == start]
        if not termini.size:  # no scene: the nearest one
            termini = truth["terminus_distance"].values[[np.argmin(np.abs(months - start))]]
        for terminus in termini:
            out[i] += (np.abs(across) < half) & (along < terminus - 0.6 * half * (across / half) ** 2)
        out[i] /= termini.size
    return out


def _shift(fields: np.ndarray, offset) -> np.ndarray:
    from scipy import ndimage

    return np.stack([ndimage.shift(f, offset, order=1, mode="nearest") for f in fields])


def _observe(coefficients, cover, ice):
    alpha, beta, gamma = coefficients
    return alpha + beta * cover + gamma * ice


def _fit_observation(cover: np.ndarray, ice: np.ndarray, snow: np.ndarray):
    """Offset ``(dy, dx)`` and per-pixel ``(alpha, beta, gamma)`` of ``snow ≈ alpha + beta cover + gamma ice``."""
    best = None
    ok = np.isfinite(snow)
    y = np.where(ok, snow, 0.0)
    for dy in np.arange(-2.0, 2.01, 0.5):
        for dx in np.arange(-2.0, 2.01, 0.5):
            design = np.stack([np.ones_like(cover), _shift(cover, (dy, dx)), _shift(ice, (dy, dx))], axis=-1)
            design = np.where(ok[..., None], design, 0.0)  # (time, y, x, 3)
            gram = np.einsum("tyxi,tyxj->yxij", design, design) + 1e-6 * np.eye(3)
            coefficients = np.linalg.solve(gram, np.einsum("tyxi,tyx->yxi", design, y)[..., None])[..., 0]
            residual = float(np.sum((y - np.einsum("tyxi,yxi->tyx", design, coefficients)) ** 2))
            if best is None or residual < best[0]:
                best = (residual, (float(dy), float(dx)), np.moveaxis(coefficients, -1, 0))
    return best[1], best[2]


# --------------------------------------------------------------------------------------------
# experiments
# --------------------------------------------------------------------------------------------
def score(prediction, ds, name: str, n_resamples: int, seed: int, bootstrap_by: str):
    """Evaluate a prediction of the test windows beside the four baselines (same pixels)."""
    from glacierxr.evaluate import evaluate

    table = evaluate(prediction, ds, split="test", baselines=BASELINES, n_resamples=n_resamples, seed=seed,
                     name=name, bootstrap_by=bootstrap_by)
    pooled = table[table["lead"].astype(str) == "all"].set_index("model")
    return table, pooled


def run_sample_seed(work: Path, seed: int, preset: dict) -> dict:
    from glacierxr.ml.patches import PatchSequences

    snow, truth = sample_composites(work, seed, preset["size"], preset["years"])
    ds = PatchSequences(snow, input_steps=STEPS_IN, target_steps=STEPS_OUT, patch=preset["patch"],
                        stride=preset["stride"], normalize="auto", val_fraction=VAL_FRACTION,
                        test_fraction=TEST_FRACTION, seed=seed)
    log(f"seed {seed}: {len(ds.split('train'))} train / {len(ds.split('val'))} val / "
        f"{len(ds.split('test'))} test windows")
    label, prediction, val_mse = fit_variants(ds, preset, preset["models"], seed)
    table, pooled = score(prediction, ds, label, preset["n_resamples"], seed, "block")
    best_baseline = table.attrs["best_baseline"]
    oracle_forecast, oracle_miss_persistence = oracle_predictions(ds, snow, truth)
    _, oracle = score(oracle_forecast, ds, "oracle", preset["n_resamples"], seed, "block")
    mse_model, mse_base = float(pooled.loc[label, "mse"]), float(pooled.loc[best_baseline, "mse"])
    mse_oracle = float(oracle.loc["oracle", "mse"])
    row = dict(seed=seed, best_model=label, best_baseline=best_baseline, mse_model=r(mse_model, 6),
               mse_best_baseline=r(mse_base, 6), mse_oracle=r(mse_oracle, 6),
               skill_vs_best_baseline=r(pooled.loc[label, "skill_vs_best_baseline"], 4),
               ci_low=r(pooled.loc[label, "skill_vs_best_baseline_low"], 4),
               ci_high=r(pooled.loc[label, "skill_vs_best_baseline_high"], 4),
               fraction_of_achievable=r((mse_base - mse_model) / (mse_base - mse_oracle), 3)
               if mse_oracle < mse_base else None,  # undefined when the oracle does not beat the baseline
               oracle_skill_vs_best_baseline=r(1 - mse_oracle / mse_base, 4),
               # the same interval for the oracle: whether "interval above 0" is achievable on this seed
               oracle_ci_low=r(oracle.loc["oracle", "skill_vs_best_baseline_low"], 4),
               oracle_ci_high=r(oracle.loc["oracle", "skill_vs_best_baseline_high"], 4),
               oracle_miss_persistence=r(oracle_miss_persistence, 3),
               damping=r(table.attrs["damping"], 3),
               baseline_mse={b: r(pooled.loc[b, "mse"], 6) for b in BASELINES},
               val_mse={k: r(v, 6) for k, v in val_mse.items()}, n_test_windows=int(pooled.loc[label, "n_samples"]))
    log(f"seed {seed}: {json.dumps({k: v for k, v in row.items() if k not in ('val_mse', 'baseline_mse')})}")
    return row


def run_real(preset: dict, seed: int) -> dict | None:
    from glacierxr.ml.patches import PatchSequences

    snow = real_composites()
    if snow is None:
        return None
    ds = PatchSequences(snow, input_steps=STEPS_IN, target_steps=STEPS_OUT, patch=1, stride=1, normalize="auto",
                        val_fraction=VAL_FRACTION, test_fraction=TEST_FRACTION, seed=seed)
    log(f"real: {snow.sizes['time']} months, {len(ds.split('train'))} train / {len(ds.split('test'))} test windows")
    label, prediction, val_mse = fit_variants(ds, preset, preset["real_models"], seed)
    table, pooled = score(prediction, ds, label, preset["n_resamples"], seed, "time")
    best_baseline = table.attrs["best_baseline"]
    row = dict(series="yatsm_p035r032", best_model=label, best_baseline=best_baseline,
               mse_model=r(pooled.loc[label, "mse"], 6), mse_best_baseline=r(pooled.loc[best_baseline, "mse"], 6),
               skill_vs_best_baseline=r(pooled.loc[label, "skill_vs_best_baseline"], 4),
               ci_low=r(pooled.loc[label, "skill_vs_best_baseline_low"], 4),
               ci_high=r(pooled.loc[label, "skill_vs_best_baseline_high"], 4),
               damping=r(table.attrs["damping"], 3),
               baseline_mse={b: r(pooled.loc[b, "mse"], 6) for b in BASELINES},
               val_mse={k: r(v, 6) for k, v in val_mse.items()}, months=int(snow.sizes["time"]),
               n_test_windows=int(pooled.loc[label, "n_samples"]))
    log(f"real: {json.dumps({k: v for k, v in row.items() if k not in ('val_mse', 'baseline_mse')})}")
    return row


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------
def verdict(row: dict, oracle: bool) -> str:
    skill, low, high = row["skill_vs_best_baseline"], row["ci_low"], row["ci_high"]
    base = row["best_baseline"].replace("_", " ")
    if low is not None and low > 0:
        words = f"beats {base} (interval above 0)"
    elif high is not None and high < 0:
        words = f"is worse than {base} (interval below 0)"
    else:
        words = f"cannot be told apart from {base} (interval includes 0)"
    text = f"the best model ({row['best_model']}) {words}: skill {skill:+.3f} [{low:+.3f}, {high:+.3f}]"
    if oracle and row["fraction_of_achievable"] is not None and row["fraction_of_achievable"] > 1:
        text += (f"; it does better than the oracle ({row['fraction_of_achievable']:.0%} of the oracle's skill), "
                 "which bounds what the true weather state foretells, not what the composites' own noise with memory adds")
    elif oracle and row["fraction_of_achievable"] is not None:
        text += f"; it captures {row['fraction_of_achievable']:.0%} of the skill the oracle shows is achievable"
    elif oracle:
        text += "; the oracle does not beat that baseline here, so no share of achievable skill is defined"
    return text


def markdown(summary: dict, mode: str, preset: dict, wall: float, jobs: int = 1) -> str:
    command = "python benchmarks/skill.py" + (" --quick" if mode == "quick" else "") + (f" --jobs {jobs}" if jobs > 1 else "")
    lines = [f"# Forecast skill against the best baseline ({mode} mode)", "",
             f"`{command}` — {wall / 60:.0f} min on CPU ({jobs} process{'es' if jobs > 1 else ''}, "
             f"torch 1 thread each). Test split; skill = 1 − MSE / MSE of the best baseline (lowest test MSE among "
             f"{', '.join(BASELINES)}); 95 % paired bootstrap interval. Models: the statistical snow-state model "
             f"(snow_state: regional snow state + per-pixel response + local level of {'/'.join(map(str, SNOW_STATE_LEVELS))} "
             "months chosen on val, least squares) and the networks "
             f"{', '.join(preset['models'])} × residual on {', '.join(preset['residuals'])} × shrinkage of the "
             f"correction {SHRINKAGE}; the best forecaster, or the mean of the 3 or 5 best, is chosen on the val "
             "split (suffix @shrinkage when not 1). The oracle's own interval (same blocks) says whether an "
             "interval above 0 is within reach on that seed.", "",
             "## Sample (dynamics=\"memory\", monthly composites, 4 → 4 months)", "",
             "| seed | best model (val) | best baseline | MSE model | MSE best baseline | MSE oracle | "
             "skill vs best baseline [95 % CI] | oracle's skill [95 % CI] | fraction of achievable | damping |",
             "|---:|---|---|---:|---:|---:|---|---|---:|---:|"]
    for row in summary["sample"]:
        lines.append(f"| {row['seed']} | {row['best_model']} | {row['best_baseline']} | {row['mse_model']} | "
                     f"{row['mse_best_baseline']} | {row['mse_oracle']} | {row['skill_vs_best_baseline']:+.3f} "
                     f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] | {row['oracle_skill_vs_best_baseline']:+.3f} "
                     f"[{row['oracle_ci_low']:+.3f}, {row['oracle_ci_high']:+.3f}] | {row['fraction_of_achievable']} | "
                     f"{row['damping']} |")
    lines += ["", "Baseline MSEs per seed: " + "; ".join(
        f"seed {row['seed']}: " + ", ".join(f"{k} {v}" for k, v in row["baseline_mse"].items())
        for row in summary["sample"]), ""]
    lines += [f"- Seed {row['seed']}: {verdict(row, True)}." for row in summary["sample"]]
    lines += ["", "The oracle forecasts the true snow cover from the true state of the sample's weather "
              "(gx.sample.oracle_forecast) and maps it onto the composites with a per-pixel linear fit on the "
              "training months. It is the best forecast of the weather's part; the composites also carry what that "
              "map does not capture (filled gaps, misregistration, the ice texture, a margin pixel's mix of ice "
              "and rock), part of it persists, and a forecaster fitted to the composites can learn it, so a "
              "fraction above 100 % is possible. How much of "
              "what the oracle's map misses persists from one month to the next (lag-1 autocorrelation on the "
              "training months, variance-weighted): " + ", ".join(
                  f"seed {row['seed']} {row['oracle_miss_persistence']:.2f}" for row in summary["sample"]) + "."]
    for row in summary["real"]:
        lines += ["", "## Real series (YATSM p035r032, Colorado, 1984-2013, 25 one-pixel series)", "",
                  f"{row['months']} monthly composites; best model (val) {row['best_model']}, best baseline "
                  f"{row['best_baseline']}; MSE {row['mse_model']} vs {row['mse_best_baseline']}; bootstrap over "
                  "issue years. Baselines: " + ", ".join(f"{k} {v}" for k, v in row["baseline_mse"].items()) + ".",
                  "", f"- Real series: {verdict(row, False)}."]
    lines += ["", "Validation MSE of every pair (first seed): " + ", ".join(
        f"{k} {v}" for k, v in summary["sample"][0]["val_mse"].items()), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sample and budget (a few minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="sample seeds (default 0 1 2)")
    parser.add_argument("--no-real", action="store_true", help="skip the real series")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--jobs", type=int, default=1, help="sample seeds run side by side (processes)")
    args = parser.parse_args(argv)
    _threads(args.threads)
    mode = "quick" if args.quick else "full"
    preset = dict(PRESETS[mode], seeds=tuple(args.seeds or PRESETS[mode]["seeds"]))
    suffix = "_quick" if args.quick else ""
    work = HERE / "_work" / f"skill-v2{suffix.replace('_', '-')}"
    work.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    summary = {"sample": _run_seeds(work, preset, args.jobs, args.threads),
               "real": [row for row in [None if args.no_real else run_real(preset, 0)] if row],
               "baselines": list(BASELINES), "mode": mode}
    wall = time.perf_counter() - wall
    summary["wall_seconds"], summary["jobs"] = round(wall, 1), args.jobs
    emit_rows(summary)
    (HERE / f"skill_summary{suffix}.json").write_text(json.dumps(summary, indent=1) + "\n")
    (HERE / f"skill_table{suffix}.md").write_text(markdown(summary, mode, preset, wall, args.jobs))
    emit("wall_seconds", r(wall, 1), "s", note=f"{mode} mode, whole script")


def _threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _run_seeds(work: Path, preset: dict, jobs: int, threads: int) -> list[dict]:
    """:func:`run_sample_seed` for every seed, in ``jobs`` processes (in seed order)."""
    seeds = preset["seeds"]
    if jobs <= 1 or len(seeds) == 1:
        return [run_sample_seed(work, seed, preset) for seed in seeds]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(seeds)), mp_context=context, initializer=_threads,
                             initargs=(threads,)) as pool:
        return list(pool.map(run_sample_seed, [work] * len(seeds), seeds, [preset] * len(seeds)))


def emit_rows(summary: dict) -> None:
    """One JSON line per sample seed and real series: the best model's test MSE vs the best baseline."""
    for row in summary["sample"] + summary["real"]:
        where = f"seed{row['seed']}" if "seed" in row else "yatsm"
        emit(f"mse_test/{where}/best_model", row["mse_model"], "(NDSI)^2", baseline=row["best_baseline"],
             baseline_value=row["mse_best_baseline"], ratio=r(row["mse_model"] / row["mse_best_baseline"], 4),
             note=f"{row['best_model']} (chosen on val); skill {row['skill_vs_best_baseline']} "
                  f"[{row['ci_low']}, {row['ci_high']}]"
                  + (f"; oracle MSE {row['mse_oracle']}, fraction of achievable {row['fraction_of_achievable']}"
                     if "mse_oracle" in row else ""))


if __name__ == "__main__":
    main()
