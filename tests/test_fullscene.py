"""Tests for glacierxr.ml.fullscene: tiling/stitching, full-scene training, the U-Net denoiser."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from glacierxr.errors import ConfigError, DataTypeError, DimensionError, ModelError  # noqa: E402
from glacierxr.ml.fullscene import (  # noqa: E402
    DenoisingUNet,
    FullSceneModel,
    FullSceneSequences,
    FullSceneTrainer,
    denoise,
    load_denoiser,
    load_fullscene,
    predict_fullscene,
    seam_loss,
    tile_grid,
    tile_scene,
    train_denoiser,
    untile_scene,
)
from glacierxr.ml.models import get_model  # noqa: E402
from glacierxr.ml.patches import PatchSequences  # noqa: E402
from glacierxr.ml.train import Trainer, masked_mse  # noqa: E402
from glacierxr.testing import make_series, raise_if_dask_computes  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class TileEcho(torch.nn.Module):
    """Returns the last input frame of every tile plus a per-tile constant (tile index)."""

    def forward(self, inputs, steps, targets=None, teacher_forcing=0.0):
        index = torch.arange(inputs.shape[0], dtype=inputs.dtype).reshape(-1, 1, 1, 1, 1)
        return inputs[:, -1:].repeat(1, steps, 1, 1, 1) + index

    def get_config(self):
        return {"name": "tile_echo"}


def small_convlstm():
    torch.manual_seed(0)
    return get_model("convlstm", hidden_channels=(4,), dropout=0.0)


# --------------------------------------------------------------------------------------------
# tiling and stitching
# --------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    time=st.integers(1, 3),
    height=st.integers(1, 23),
    width=st.integers(1, 23),
    patch=st.integers(1, 9),
    halo=st.integers(0, 3),
)
def test_tile_scene__untile_round_trips_exactly(batch, time, height, width, patch, halo):
    scene = torch.randn(batch, time, 1, height, width, dtype=torch.float64)
    tiles = tile_scene(scene, patch, halo=halo)
    n_y, n_x = tile_grid(height, width, patch)
    assert tiles.shape == (batch * n_y * n_x, time, 1, patch + 2 * halo, patch + 2 * halo)
    assert torch.equal(untile_scene(tiles, (height, width), patch, halo=halo), scene)


def test_tile_scene__tiles_hold_their_square_and_replicated_edges():
    scene = torch.arange(7 * 10, dtype=torch.float32).reshape(1, 1, 1, 7, 10)
    tiles = tile_scene(scene, 4)  # 2 x 3 tiles, the last row/column padded
    assert tiles.shape == (6, 1, 1, 4, 4)
    assert torch.equal(tiles[1, 0, 0], scene[0, 0, 0, 0:4, 4:8])  # an interior tile is the square
    corner = tiles[5, 0, 0]  # rows 4..7 and columns 8..11 of a 7 x 10 scene
    assert torch.equal(corner[:3, :2], scene[0, 0, 0, 4:7, 8:10])
    assert torch.equal(corner[3, :2], scene[0, 0, 0, 6, 8:10])  # replicated last row
    assert torch.equal(corner[:3, 2], scene[0, 0, 0, 4:7, 9])  # replicated last column
    halo = tile_scene(scene, 4, halo=1)
    assert torch.equal(halo[4, 0, 0, 1:5, 1:5], tiles[4, 0, 0])  # the core is the same tile
    assert torch.equal(halo[4, 0, 0, 0, 1:5], scene[0, 0, 0, 3, 4:8])  # the halo is the neighbour


def test_untile_scene__gradient_reaches_each_core_pixel_once():
    scene = torch.randn(2, 2, 1, 9, 11)
    tiles = tile_scene(scene, 4, halo=2).requires_grad_(True)
    stitched = untile_scene(tiles, (9, 11), 4, halo=2)
    weights = torch.randn_like(stitched)
    (stitched * weights).sum().backward()
    grad = tiles.grad
    # the core pixels that land in the scene get exactly their weight, everything else zero
    assert torch.equal(untile_scene(grad, (9, 11), 4, halo=2), weights)
    assert float(grad.abs().sum()) == pytest.approx(float(weights.abs().sum()), rel=1e-6)


def test_tile_scene__bad_input_raises():
    with pytest.raises(DimensionError, match="batch, time, channels, height, width"):
        tile_scene(torch.zeros(3, 4, 4), 2)
    with pytest.raises(ConfigError, match="patch must be a positive integer"):
        tile_scene(torch.zeros(1, 1, 1, 4, 4), 0)
    with pytest.raises(DimensionError, match="do not fit"):
        untile_scene(torch.zeros(5, 1, 1, 2, 2), (4, 4), 2)


# --------------------------------------------------------------------------------------------
# the wrapper model and the loss
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(20, 20), (23, 31), (9, 40)])
@pytest.mark.parametrize("halo", [0, 3])
def test_fullscene_model__output_is_the_whole_scene(shape, halo):
    wrapper = FullSceneModel(small_convlstm(), patch=10, halo=halo)
    out = wrapper(torch.rand(2, 4, 1, *shape), steps=3)
    assert out.shape == (2, 3, 1, *shape)


def test_fullscene_model__each_tile_is_the_patch_models_forecast():
    inner = small_convlstm().eval()
    wrapper = FullSceneModel(inner, patch=8).eval()
    scene = torch.rand(1, 4, 1, 16, 24)
    with torch.no_grad():
        out = wrapper(scene, steps=2)
        alone = inner(scene[..., 8:16, 8:16], steps=2)
    assert torch.allclose(out[..., 8:16, 8:16], alone, atol=1e-6)
    # tile order: row-major within each scene
    echo = FullSceneModel(TileEcho(), patch=8)(scene, steps=1)
    assert torch.allclose(echo[0, 0, 0, 8:16, 16:24] - scene[0, -1, 0, 8:16, 16:24], torch.full((8, 8), 5.0))


def test_fullscene_model__gradient_flows_through_stitching():
    wrapper = FullSceneModel(small_convlstm(), patch=6)
    scene = torch.rand(1, 4, 1, 13, 13)
    target = torch.rand(1, 2, 1, 13, 13)
    masked_mse(wrapper(scene, steps=2, targets=target, teacher_forcing=1.0), target, torch.ones_like(target)).backward()
    grads = [p.grad for p in wrapper.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_full_scene_loss__ignores_masked_pixels():
    scene = torch.rand(2, 4, 1, 12, 12)
    target = torch.rand(2, 2, 1, 12, 12)
    valid = (torch.rand_like(target) > 0.3).float()
    garbage = torch.where(valid > 0, target, torch.full_like(target, float("nan")))
    other = torch.where(valid > 0, target, torch.full_like(target, 1e6))

    def loss_and_grads(wanted):
        wrapper = FullSceneModel(small_convlstm(), patch=5)
        prediction = wrapper(scene, steps=2)
        loss = masked_mse(prediction, wanted, valid) + seam_loss(prediction, wanted, valid, 5)[0]
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in wrapper.parameters()]

    reference, reference_grads = loss_and_grads(target)
    for wanted in (garbage, other):
        value, grads = loss_and_grads(wanted)
        assert value == pytest.approx(reference, rel=1e-6)
        assert all(torch.allclose(a, b) for a, b in zip(grads, reference_grads, strict=True))


def test_seam_loss__counts_jumps_across_tile_borders_only():
    target = torch.zeros(1, 1, 1, 6, 6)
    valid = torch.ones_like(target)
    inside = target.clone()
    inside[..., :, 1:] = 1.0  # a step inside the first 3-px tile column: not a border
    assert float(seam_loss(inside, target, valid, 3)[0]) == 0.0
    border = target.clone()
    border[..., :, 3:] = 1.0  # a step exactly on the border between tile columns
    sse, count = seam_loss(border, target, valid, 3)
    assert (float(sse), int(count)) == (6.0, 12)  # 6 rows cross it; 6 + 6 border pairs in all
    assert float(seam_loss(border, border, valid, 3)[0]) == 0.0  # a real edge in the target is fine
    valid[..., :, 3] = 0  # pairs touching an invalid pixel do not count
    assert seam_loss(border, target, valid, 3)[1] == 6 - 1  # row pairs: one of 6 columns lost


def test_fullscene_model__bad_arguments_raise():
    with pytest.raises(ModelError, match="patch must be an integer >= 1"):
        FullSceneModel(small_convlstm(), patch=0)
    with pytest.raises(ModelError, match="torch.nn.Module"):
        FullSceneModel("convlstm", patch=5)
    with pytest.raises(DimensionError, match="targets must have shape"):
        FullSceneModel(small_convlstm(), patch=5)(torch.zeros(1, 4, 1, 10, 10), 2, targets=torch.zeros(1, 2, 1, 5, 5))


# --------------------------------------------------------------------------------------------
# whole-scene sequences and training
# --------------------------------------------------------------------------------------------
def cube(times=24, height=18, width=22, seed=0, chunks=None):
    rng = np.random.default_rng(seed)
    values = rng.random((times, height, width)).astype(np.float32)
    values[rng.random(values.shape) < 0.05] = np.nan
    da = make_series(values, freq="QS", chunks=chunks)
    da.attrs["months"] = 3
    return da


def test_full_scene_sequences__split_and_values_match_the_cube():
    da = cube()
    observed = xr.DataArray(np.random.default_rng(1).random(da.shape) > 0.2, dims=da.dims)
    da = da.assign_coords(observed=observed)
    scenes = FullSceneSequences(da, patch=6, normalize="auto", val_fraction=0.2, test_fraction=0.2)
    patches = PatchSequences(da, patch=6, stride=6, normalize="auto", val_fraction=0.2, test_fraction=0.2)
    assert scenes.split_info["time_ranges"] == patches.split_info["time_ranges"]
    assert scenes.normalization == pytest.approx(patches.normalization)
    ranges = scenes.split_info["time_ranges"]
    for name in ("train", "val", "test"):
        view = scenes.split(name)
        lo, hi = ranges[name]
        assert len(view) == hi - lo - 8 + 1
        assert view.windows.t0.min() >= lo and view.windows.t0.max() + 8 <= hi  # no leakage
    test = scenes.split("test")
    inputs, targets, valid = test[0]
    t0 = ranges["test"][0]
    mean, std = scenes.normalization["mean"], scenes.normalization["std"]
    raw = da.values
    expected_inputs = np.nan_to_num((raw[t0 : t0 + 4] - mean) / std, nan=0.0)
    np.testing.assert_allclose(inputs[:, 0].numpy(), expected_inputs, rtol=1e-5, atol=1e-6)
    expected_valid = np.isfinite(raw[t0 + 4 : t0 + 8]) & observed.values[t0 + 4 : t0 + 8]
    np.testing.assert_array_equal(valid[:, 0].numpy().astype(bool), expected_valid)
    assert float(targets[valid == 0].abs().sum()) == 0.0


def test_full_scene_sequences__lazy_until_a_sample_is_read():
    da = cube(chunks={"time": 1})
    with raise_if_dask_computes():
        scenes = FullSceneSequences(da, patch=6)
        train = scenes.split("train")
        assert len(train) > 0
    with raise_if_dask_computes(max_computes=2):
        train[0]


def test_full_scene_sequences__bad_input_raises():
    with pytest.raises(ConfigError, match="split='temporal' only"):
        FullSceneSequences(cube(), patch=6, split="spatial")
    with pytest.raises(DimensionError, match="larger than the scene"):
        FullSceneSequences(cube(), patch=30)
    with pytest.raises(DimensionError, match="periods"):
        FullSceneSequences(cube(times=6), patch=6)


def test_full_scene_sequences__options_mirror_patch_sequences():
    """Every option but patch and split is PatchSequences' (same name, type and default), so
    the two cannot drift apart; FullSceneSequences hands them on to PatchSequences."""
    import inspect

    from glacierxr.ml import PatchSequences

    own = inspect.signature(FullSceneSequences).parameters
    theirs = inspect.signature(PatchSequences).parameters
    assert list(own) == ["da", "input_steps", "target_steps", "patch", "split", "val_fraction",
                         "test_fraction", "buffer", "normalize", "valid_coord", "time_dim", "y_dim", "x_dim"]
    for name in set(own) - {"patch", "split"}:
        assert own[name] == theirs[name]
    # the defaults are used: 40 periods split 24/8/8 as in PatchSequences' docstring example
    scenes = FullSceneSequences(cube(times=40), patch=6)
    assert scenes.input_steps == 4 and scenes.target_steps == 4
    assert scenes.split_info["time_ranges"] == {"train": (0, 24), "val": (24, 32), "test": (32, 40)}


@pytest.mark.slow
def test_full_scene_training__unchanged_trainer_learns_and_checkpoints_reload(tmp_path):
    # the scene repeats one year of four seasons: the last input is the target a year later
    rng = np.random.default_rng(0)
    seasons = rng.random((4, 15, 15)).astype(np.float32)
    da = make_series(np.tile(seasons, (6, 1, 1)), freq="QS")
    scenes = FullSceneSequences(da, patch=5, val_fraction=0.0, test_fraction=0.0)
    wrapper = FullSceneModel(small_convlstm(), patch=5)
    trainer = Trainer(wrapper, max_epochs=3, batch_size=4, lr=1e-2, progress=False, device="cpu",
                      checkpoint_dir=tmp_path, patience=None)
    history = trainer.fit(scenes.split("train"))
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
    reloaded = load_fullscene(tmp_path / "model.pt")
    assert reloaded.get_config() == wrapper.get_config()
    inputs = scenes.split("train")[0][0][None]
    with torch.no_grad():
        assert torch.allclose(reloaded(inputs, 4), wrapper.eval()(inputs, 4))


def test_full_scene_trainer__seam_term_is_added_to_the_loss():
    da = cube(times=12, height=10, width=10)
    scenes = FullSceneSequences(da, patch=5, val_fraction=0.0, test_fraction=0.0)
    batch = [torch.stack(items) for items in zip(*(scenes[i] for i in range(2)))]
    wrapper = FullSceneModel(small_convlstm(), patch=5).eval()
    plain = FullSceneTrainer(wrapper, seam_weight=0.0, device="cpu", progress=False)
    seams = FullSceneTrainer(wrapper, seam_weight=2.0, device="cpu", progress=False)
    inputs, targets, valid = batch
    with torch.no_grad():
        sse, count = plain._forward(inputs, targets, valid.bool(), teacher_forcing=0.0, train=False)
        sse2, count2 = seams._forward(inputs, targets, valid.bool(), teacher_forcing=0.0, train=False)
        prediction = wrapper(inputs, 4)
    seam_sse, seam_count = seam_loss(prediction, targets, valid, 5)
    assert int(count2) == int(count)
    assert float(sse2 / count2) == pytest.approx(float(sse / count + 2.0 * seam_sse / seam_count), rel=1e-5)
    with pytest.raises(ModelError, match="FullSceneModel"):
        FullSceneTrainer(small_convlstm(), seam_weight=1.0)
    with pytest.raises(ConfigError, match="seam_weight"):
        FullSceneTrainer(wrapper, seam_weight=-1.0)


def test_predict_fullscene__lazy_labelled_and_equal_to_the_model():
    da = cube(times=8, height=12, width=14, chunks={"time": 1})
    wrapper = FullSceneModel(small_convlstm(), patch=5)
    with raise_if_dask_computes():
        forecast = predict_fullscene(da, wrapper, steps=2)
    assert forecast.dims == ("time", "y", "x") and forecast.lead.values.tolist() == [1, 2]
    assert forecast.rio.crs == da.rio.crs
    assert forecast.name == "snow_mask_forecast" and forecast.attrs["units"] == "1"
    assert str(forecast.time.values[0])[:10] == "2022-01-01"
    inputs = torch.from_numpy(np.nan_to_num(da.values[-4:]).astype(np.float32))[None, :, None]
    with torch.no_grad():
        expected = wrapper.eval()(inputs, 2)[0, :, 0].numpy()
    # delivered within a snow mask's valid range (issue 17): the model's output clipped to [0, 1]
    assert (forecast.attrs["valid_min"], forecast.attrs["valid_max"]) == (0.0, 1.0)
    np.testing.assert_allclose(forecast.values, np.clip(expected, 0.0, 1.0), rtol=1e-5, atol=1e-6)



def test_predict_fullscene__a_residual_model_reads_its_baseline_from_the_history():
    # A residual model trained on patches, wrapped to forecast whole scenes. Its network is zeroed,
    # so the forecast is its baseline, damped anomaly persistence, computed here by hand: each
    # month's climatology plus phi**k times the last anomaly, phi the lag-1 least squares of the
    # anomalies. The raw periods (what the wrapper read before) would be refused by the model.
    from glacierxr.ml.models.residual import ResidualForecaster

    rng = np.random.default_rng(2)
    months, size = 36, 10
    season = 0.5 + 0.2 * np.cos(2 * np.pi * np.arange(months) / 12)
    weather = np.zeros(months)
    for t in range(1, months):
        weather[t] = 0.7 * weather[t - 1] + 0.05 * rng.standard_normal()
    values = season[:, None, None] + weather[:, None, None] + 0.02 * rng.standard_normal((months, size, size))
    da = make_series(values.astype(np.float32), freq="MS").chunk({"time": 12})
    network = small_convlstm()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
    model = ResidualForecaster(network, input_steps=4, baseline="anomaly_persistence", scale=0.1,
                               context=("climatology", "scene_anomaly"))
    with raise_if_dask_computes():
        forecast = predict_fullscene(da, FullSceneModel(model, patch=4), steps=3)
    clim = np.stack([values[phase::12].mean(axis=0) for phase in range(12)])
    anomaly = values - clim[np.arange(months) % 12]
    phi = np.sum(anomaly[1:] * anomaly[:-1]) / np.sum(anomaly[:-1] ** 2)
    expected = np.stack([clim[(months - 1 + k) % 12] + phi**k * anomaly[-1] for k in (1, 2, 3)])
    np.testing.assert_allclose(forecast.values, expected, atol=1e-5)
    assert forecast.lead.values.tolist() == [1, 2, 3] and str(forecast.time.values[0])[:7] == "2023-01"


def test_full_scene_trainer__refuses_a_residual_model_with_the_way_to_train_it():
    from glacierxr.ml.models.residual import ResidualForecaster

    model = ResidualForecaster(small_convlstm(), input_steps=4, baseline="anomaly_persistence", scale=0.1)
    with pytest.raises(ModelError, match="Train it on patches"):
        FullSceneTrainer(FullSceneModel(model, patch=4))

# --------------------------------------------------------------------------------------------
# the U-Net denoiser
# --------------------------------------------------------------------------------------------
def smooth_fields(n, size, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    fields = []
    for _ in range(n):
        a, b, c, d = rng.uniform(0.5, 2.5, 4)
        fields.append(0.5 + 0.25 * np.sin(2 * np.pi * (a * x + c)) * np.cos(2 * np.pi * (b * y + d)))
    return np.asarray(fields, dtype=np.float32)


def seams(size, patch, amplitude=0.15):
    """A seam pattern: lines along every tile border and a checkerboard offset of tiles."""
    index = np.arange(size)
    line = ((index % patch) == 0) | ((index % patch) == patch - 1)
    pattern = amplitude * (line[:, None] | line[None, :]).astype(np.float32)
    checker = ((index[:, None] // patch + index[None, :] // patch) % 2).astype(np.float32)
    return pattern + 0.5 * amplitude * checker


@pytest.mark.slow
def test_denoiser__learns_to_remove_a_seam_pattern():
    size, patch = 32, 8
    train_clean = smooth_fields(24, size, seed=0)
    test_clean = smooth_fields(6, size, seed=1)
    noise = seams(size, patch)
    denoiser = train_denoiser(train_clean + noise, train_clean, base_channels=8, depth=2, epochs=40,
                              batch_size=8, lr=3e-3, crop=None, seed=0)
    with torch.no_grad():
        cleaned = denoiser(torch.from_numpy(test_clean + noise)[:, None])[:, 0].numpy()
    before = float(np.mean(noise**2))
    after = float(np.mean((cleaned - test_clean) ** 2))
    assert after < 0.2 * before
    assert denoiser.history[-1] < denoiser.history[0]


def test_denoiser__starts_as_the_identity_and_checks_its_input(tmp_path):
    denoiser = DenoisingUNet(base_channels=4, depth=2)
    frames = torch.rand(2, 1, 13, 19)
    assert torch.equal(denoiser(frames), frames)
    with pytest.raises(DimensionError, match=r"\(N, 1, H, W\)"):
        denoiser(torch.rand(2, 13, 19))
    with pytest.raises(ModelError, match="depth"):
        DenoisingUNet(depth=-1)
    from glacierxr.ml.checkpoint import save_model

    save_model(denoiser, tmp_path / "denoiser.pt")
    assert load_denoiser(tmp_path / "denoiser.pt").get_config() == denoiser.get_config()


def test_denoise__lazy_keeps_coords_crs_and_attrs():
    torch.manual_seed(0)
    denoiser = DenoisingUNet(base_channels=4, depth=1)
    with torch.no_grad():  # a non-trivial correction
        denoiser.unet.out.weight.normal_(0, 0.1)
    forecast = cube(times=3, height=20, width=24, chunks={"time": 1, "y": 10, "x": 12})
    forecast = forecast.assign_coords(lead=("time", [1, 2, 3]))
    forecast.attrs.update(model="convlstm")
    with raise_if_dask_computes():
        out = denoise(forecast, denoiser)
    assert out.dims == forecast.dims and out.name == forecast.name
    assert out.rio.crs == forecast.rio.crs
    for name in ("time", "y", "x", "lead", "spatial_ref"):
        xr.testing.assert_identical(out[name], forecast[name])
    assert out.attrs["model"] == "convlstm" and "DenoisingUNet" in out.attrs["denoised"]
    # NaN stays NaN; blocks with an overlap give the whole-scene result
    whole = denoise(forecast.compute(), denoiser).values
    blocked = out.values
    np.testing.assert_array_equal(np.isnan(blocked), np.isnan(forecast.values))
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        direct = denoiser(torch.from_numpy(np.nan_to_num(forecast.values))[:, None])[:, 0].numpy()
    direct[np.isnan(forecast.values)] = np.nan
    np.testing.assert_allclose(whole, direct, rtol=1e-5, atol=1e-6)


def test_denoise__bad_input_raises():
    denoiser = DenoisingUNet(base_channels=4, depth=1)
    with pytest.raises(DataTypeError, match="DataArray"):
        denoise(np.zeros((2, 4, 4)), denoiser)
    with pytest.raises(DataTypeError, match="DenoisingUNet"):
        denoise(cube(times=2), small_convlstm())
    with pytest.raises(DimensionError, match=r"lacks dimension\(s\) \[.x.\]"):
        denoise(cube(times=2).rename(x="col"), denoiser)
