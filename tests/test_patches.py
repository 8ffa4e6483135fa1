"""Tests of glacierxr.ml.patches: windows, splits without leakage, streaming, normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
xbatcher = pytest.importorskip("xbatcher")

from glacierxr.errors import ConfigError, DataTypeError, DimensionError  # noqa: E402
from glacierxr.ml.patches import PatchSequences, count_sequences, window_starts  # noqa: E402
from glacierxr.testing import make_series, raise_if_dask_computes  # noqa: E402


def id_cube(times=24, height=40, width=40, **kwargs) -> xr.DataArray:
    """A cube whose value is the flat index of its pixel-time, so samples reveal where they come from."""
    values = np.arange(times * height * width, dtype=np.float32).reshape(times, height, width)
    return make_series(values, freq="QS", **kwargs)


def seen_ids(view, limit=None) -> np.ndarray:
    """Every pixel-time id that appears anywhere (inputs or targets) in the samples of ``view``."""
    seen = []
    for i, (inputs, targets, _) in enumerate(view):
        seen.append(inputs.numpy().ravel())
        seen.append(targets.numpy().ravel())
        if limit is not None and i >= limit:
            break
    return np.unique(np.concatenate(seen)).astype(np.int64)


def target_pixel_times(view) -> np.ndarray:
    """Boolean (time, y, x) array of the pixel-times that are targets of some sample of ``view``."""
    data = view.data
    flagged = np.zeros(data.shape, bool)
    t_in, p = view.input_steps, view.patch
    for t0, y0, x0 in view.windows[["t0", "y0", "x0"]].itertuples(index=False):
        flagged[t0 + t_in : t0 + t_in + view.target_steps, y0 : y0 + p, x0 : x0 + p] = True
    return flagged


# ----------------------------------------------------------------------------------- windows
@settings(max_examples=50, deadline=None)
@given(length=st.integers(1, 80), size=st.integers(1, 30), stride=st.integers(1, 30))
def test_window_starts__xbatcher_offsets_plus_edge_window_cover_everything(length, size, stride):
    if size > length or stride > size:
        return
    starts = window_starts(length, size, stride)
    regular = list(range(0, length - size + 1, stride))  # xbatcher's _gen_slices
    assert starts[: len(regular)].tolist() == regular
    assert starts[-1] == length - size
    assert len(starts) == len(regular) + (regular[-1] != length - size)
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + size] = True
    assert covered.all()


def test_patch_sequences__windows_are_xbatchers_plus_edge_windows_with_same_data():
    cube = id_cube(times=10, height=23, width=27)
    ds = PatchSequences(cube, input_steps=2, target_steps=2, patch=6, stride=4, val_fraction=0, test_fraction=0)
    generator = xbatcher.BatchGenerator(
        cube, input_dims={"time": 4, "y": 6, "x": 6}, input_overlap={"time": 3, "y": 2, "x": 2}
    )
    theirs = {
        (sel["time"].start, sel["y"].start, sel["x"].start): index
        for index, (sel,) in generator._batch_selectors.selectors.items()
    }
    table = ds.windows
    ours = set(map(tuple, table[["t0", "y0", "x0"]].to_numpy().tolist()))
    assert set(theirs) <= ours
    extra = ours - set(theirs)
    assert extra and all(y0 == 23 - 6 or x0 == 27 - 6 for _, y0, x0 in extra)
    assert len(ds) == len(ours) == count_sequences(10, 23, 27, input_steps=2, target_steps=2, patch=6, stride=4)
    for position in (0, 17, len(ds) // 2):
        row = table.iloc[position]
        key = (row.t0, row.y0, row.x0)
        if key not in theirs:
            continue
        expected = generator[theirs[key]].to_numpy()
        inputs, targets, _ = ds[position]
        np.testing.assert_array_equal(torch.cat([inputs, targets])[:, 0].numpy(), expected)


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(5, 40), width=st.integers(5, 40), patch=st.integers(1, 12), stride_fraction=st.floats(0.05, 1)
)
def test_patch_sequences__union_of_windows_covers_every_pixel(height, width, patch, stride_fraction):
    patch = min(patch, height, width)
    stride = max(1, int(patch * stride_fraction))
    ds = PatchSequences(make_series(np.zeros((3, height, width))), input_steps=2, target_steps=1, patch=patch,
                        stride=stride, val_fraction=0, test_fraction=0)
    covered = np.zeros((height, width), bool)
    for y0, x0 in ds.windows[["y0", "x0"]].drop_duplicates().itertuples(index=False):
        covered[y0 : y0 + patch, x0 : x0 + patch] = True
    assert covered.all()


def test_count_sequences__paper_setup():
    # 96 monthly periods, 8-period windows -> 89 time windows; (800 - 50) / 10 + 1 = 76 per axis.
    assert count_sequences(96, 800, 800) == 89 * 76 * 76 == 514_064
    # the seed paper's 566,048 = 76 * 76 * 98: it would need 98 time windows (105 periods).
    assert count_sequences(105, 800, 800) == 566_048


# ----------------------------------------------------------------------------------- samples
def test_patch_sequences__samples_have_shapes_dtype_and_no_nan():
    values = np.random.default_rng(1).random((12, 20, 20)).astype(np.float32)
    values[6, 3:9, 3:9] = np.nan  # a hole in a target frame of the first windows
    values[1, 0:4, 0:4] = np.nan  # a hole in an input frame
    ds = PatchSequences(make_series(values), patch=10, stride=5, val_fraction=0, test_fraction=0)
    inputs, targets, valid = ds[0]
    assert inputs.shape == (4, 1, 10, 10) and targets.shape == (4, 1, 10, 10) and valid.shape == (4, 1, 10, 10)
    assert inputs.dtype == targets.dtype == valid.dtype == torch.float32
    for inputs, targets, valid in ds:
        assert torch.isfinite(inputs).all() and torch.isfinite(targets).all()
    inputs, targets, valid = ds[0]  # window t0=0, y0=0, x0=0: targets are periods 4..7
    assert inputs[1, 0, 0:4, 0:4].eq(0).all()
    assert valid[2, 0, 3:9, 3:9].eq(0).all() and targets[2, 0, 3:9, 3:9].eq(0).all()
    assert valid.sum() == 4 * 100 - 36
    np.testing.assert_allclose(targets[0, 0].numpy(), values[4, :10, :10])


def test_patch_sequences__observed_coordinate_sets_the_valid_mask():
    values = np.random.default_rng(2).random((8, 12, 12)).astype(np.float32)
    cube = make_series(values)
    observed = np.ones(values.shape, bool)
    observed[5, :6, :6] = False  # gap-filled: a value exists but it is not an observation
    cube = cube.assign_coords(observed=(("time", "y", "x"), observed))
    ds = PatchSequences(cube, patch=12, stride=12, val_fraction=0, test_fraction=0)
    _, targets, valid = ds[0]
    assert valid[1, 0, :6, :6].eq(0).all() and valid.sum() == 4 * 144 - 36
    counts = cube.assign_coords(observation_count=(("time", "y", "x"), observed.astype(int) * 3)).drop_vars("observed")
    _, _, valid_from_counts = PatchSequences(counts, patch=12, stride=12, val_fraction=0, test_fraction=0)[0]
    assert torch.equal(valid, valid_from_counts)


def test_patch_sequences__iteration_equals_random_access_and_coords():
    cube = id_cube(times=20, height=24, width=24)
    view = PatchSequences(cube, patch=8, stride=8, val_fraction=0, test_fraction=0.3).split("train", shuffle=False)
    streamed = list(view)
    assert len(streamed) == len(view)
    for i in (0, 5, len(view) - 1):
        assert all(torch.equal(a, b) for a, b in zip(streamed[i], view[i]))
        coords = view.sample_coords(i)
        expected = cube.sel(time=coords["input_times"], y=coords["y"], x=coords["x"]).to_numpy()
        np.testing.assert_array_equal(streamed[i][0][:, 0].numpy(), expected)
        row = view.windows.iloc[i]
        assert (row.t0, row.y0, row.x0) == (coords["t0"], coords["y0"], coords["x0"])
        assert row.time == coords["input_times"][0] and row.target_time == coords["target_times"][0]
    with pytest.raises(IndexError, match="out of range"):
        view[len(view)]


def test_patch_sequences__dask_backed_equals_numpy_backed_and_is_lazy():
    cube = id_cube(times=20, height=24, width=24)
    lazy = cube.chunk({"time": 5, "y": 10, "x": 7})
    with raise_if_dask_computes():
        dataset = PatchSequences(lazy, patch=8, stride=4, normalize="auto", test_fraction=0.3, val_fraction=0)
        train = dataset.split("train")
        _ = train.windows, len(train)
    eager = PatchSequences(cube, patch=8, stride=4, normalize="auto", test_fraction=0.3, val_fraction=0).split("train")
    for a, b in zip(eager.split("train", shuffle=False), train.split("train", shuffle=False)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert eager.normalization == pytest.approx(train.normalization)


# ----------------------------------------------------------------------------------- splits
@pytest.mark.parametrize("split", ["temporal", "spatial"])
def test_split__no_test_target_pixel_time_in_any_training_sample(split):
    cube = id_cube(times=24, height=48, width=48)
    ds = PatchSequences(cube, patch=8, stride=4, split=split, block_size=16, val_fraction=0.15, test_fraction=0.15)
    train, val, test = (ds.split(name) for name in ("train", "val", "test"))
    assert len(train) and len(val) and len(test)
    test_targets = np.flatnonzero(target_pixel_times(test))
    assert test_targets.size
    seen_in_training = seen_ids(train)
    assert np.intersect1d(seen_in_training, test_targets).size == 0
    assert np.intersect1d(seen_ids(val), test_targets).size == 0
    # and no window is shared between splits
    assert not set(train.window_ids) & set(test.window_ids)


def test_split__random_split_of_the_paper_leaks():
    cube = id_cube(times=24, height=48, width=48)
    ds = PatchSequences(cube, patch=8, stride=4, split="random", val_fraction=0.1, test_fraction=0.2)
    test_targets = np.flatnonzero(target_pixel_times(ds.split("test")))
    leaked = np.intersect1d(seen_ids(ds.split("train")), test_targets)
    assert leaked.size / test_targets.size > 0.9  # nearly every test target was seen in training


def test_temporal_split__no_window_straddles_a_boundary_and_gap_is_kept():
    ds = PatchSequences(id_cube(times=40), patch=20, stride=10, buffer=2)
    ranges = ds.split_info["time_ranges"]
    assert ranges["train"][1] + 2 == ranges["val"][0] and ranges["val"][1] + 2 == ranges["test"][0]
    for name, (lo, hi) in ranges.items():
        t0 = ds.split(name).windows["t0"]
        assert t0.min() >= lo and (t0 + 8).max() <= hi
    table = ds.windows
    assert set(table["split"].unique()) == {"train", "val", "test", "unused"}
    assert (table["split"] != "unused").sum() == sum(len(ds.split(n)) for n in ("train", "val", "test"))


def test_spatial_split__windows_of_different_splits_are_a_buffer_apart():
    ds = PatchSequences(id_cube(times=9, height=64, width=64), patch=8, stride=2, split="spatial", block_size=16,
                        val_fraction=0.2, test_fraction=0.2)
    footprints = {}
    for name in ("train", "val", "test"):
        w = ds.split(name).windows[["y0", "x0"]].drop_duplicates().to_numpy()
        footprints[name] = w
        assert len(w)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        ya, xa = footprints[a][:, None, 0], footprints[a][:, None, 1]
        yb, xb = footprints[b][None, :, 0], footprints[b][None, :, 1]
        gap_y = np.maximum(yb - (ya + 8), ya - (yb + 8))
        gap_x = np.maximum(xb - (xa + 8), xa - (xb + 8))
        assert np.maximum(gap_y, gap_x).min() >= 8  # Chebyshev gap between footprints >= one patch


# ------------------------------------------------------------------------------- iteration
def test_shuffle__same_windows_new_order_each_epoch_reproducible():
    ds = PatchSequences(id_cube(times=16, height=32, width=32), patch=8, stride=4, tile_mb=0.05,
                        val_fraction=0, test_fraction=0.3)
    train = ds.split("train")
    assert train.shuffle and not ds.split("test").shuffle
    first = [int(s[0][0, 0, 0, 0]) for s in train]
    second = [int(s[0][0, 0, 0, 0]) for s in train]
    assert sorted(first) == sorted(second) and first != second
    train.set_epoch(3)
    again = [int(s[0][0, 0, 0, 0]) for s in train]
    assert again == [int(s[0][0, 0, 0, 0]) for s in train]
    plain = [int(s[0][0, 0, 0, 0]) for s in ds.split("train", shuffle=False)]
    assert sorted(plain) == sorted(first) and plain != first


def test_worker_sharding__workers_split_the_windows_without_overlap():
    train = PatchSequences(id_cube(times=16, height=32, width=32), patch=8, stride=4, tile_mb=0.05,
                           val_fraction=0, test_fraction=0).split("train")
    for workers in (2, 3):
        shards = [np.concatenate([b.ids for b in train._stream(batch_size=32, shuffle=True, epoch=1,
                                                                 worker_id=w, num_workers=workers)])
                  for w in range(workers)]
        merged = np.concatenate(shards)
        assert merged.size == len(train) and np.unique(merged).size == len(train)


@pytest.mark.slow
def test_dataloader__two_workers_yield_each_sample_once():
    train = PatchSequences(id_cube(times=12, height=24, width=24), patch=8, stride=4, tile_mb=0.02,
                           val_fraction=0, test_fraction=0).split("train")
    loader = torch.utils.data.DataLoader(train, batch_size=16, num_workers=2)
    firsts = torch.cat([inputs[:, 0, 0, 0, 0] for inputs, _, _ in loader]).numpy()
    assert firsts.size == len(train) and np.unique(firsts).size == len(train)
    batches = list(torch.utils.data.DataLoader(train.batched(16), batch_size=None, num_workers=2))
    assert sum(b[0].shape[0] for b in batches) == len(train)
    assert batches[0][0].shape[1:] == (4, 1, 8, 8)


# ---------------------------------------------------------------------------- normalisation
def test_normalize_auto__uses_training_pixels_only_and_round_trips():
    values = np.random.default_rng(3).normal(2.0, 0.5, (24, 16, 16)).astype(np.float32)
    values[-8:] += 10.0  # test periods are very different: they must not move the statistics
    ds = PatchSequences(make_series(values), patch=8, stride=4, normalize="auto")
    lo, hi = ds.split_info["time_ranges"]["train"]
    stats = ds.normalization
    assert stats["mean"] == pytest.approx(values[lo:hi].mean(dtype=np.float64), rel=1e-6)
    assert stats["std"] == pytest.approx(values[lo:hi].std(dtype=np.float64), rel=1e-5)
    inputs, targets, _ = ds.split("train", shuffle=False)[0]
    np.testing.assert_allclose(ds.denormalize(inputs[:, 0].numpy()), values[0:4, :8, :8], rtol=1e-5)
    np.testing.assert_allclose(ds.normalize_values(values[4:8, :8, :8]), targets[:, 0].numpy(), atol=1e-5)
    fixed = PatchSequences(make_series(values), patch=8, stride=4, normalize=(2.0, 0.5))
    assert fixed.normalization == {"mean": 2.0, "std": 0.5}
    assert PatchSequences(make_series(values), patch=8, stride=4).normalization is None


# ----------------------------------------------------------------------------------- errors
def test_errors__bad_inputs_say_what_and_how_to_fix():
    cube = id_cube(times=10, height=20, width=30)
    with pytest.raises(DimensionError, match=r"larger than the scene \(y=20, x=30.*patch <= 20"):
        PatchSequences(cube, patch=25)
    with pytest.raises(DimensionError, match="has 6 periods.*needs 8"):
        PatchSequences(cube.isel(time=slice(0, 6)), patch=5, stride=5)
    with pytest.raises(DimensionError, match="remain for training"):
        PatchSequences(cube, patch=5, stride=5)
    with pytest.raises(DimensionError, match="Select or reduce the extra dims"):
        PatchSequences(cube.expand_dims(band=2), patch=5, stride=5)
    with pytest.raises(DataTypeError, match="DataArray"):
        PatchSequences(cube.to_dataset(), patch=5, stride=5)
    with pytest.raises(ConfigError, match="stride <= patch"):
        PatchSequences(cube, patch=5, stride=6, val_fraction=0, test_fraction=0)
    with pytest.raises(ConfigError, match="Unknown split"):
        PatchSequences(cube, patch=5, stride=5, val_fraction=0, test_fraction=0).split("validation")


# ----------------------------------------------------------------------------------- memory
@pytest.mark.slow
def test_streaming__800x800x96_lazy_cube_in_bounded_memory():
    import tracemalloc

    import dask.array as dsa

    data = dsa.random.default_rng(0).random((96, 800, 800), chunks=(1, 800, 800), dtype=np.float32)
    cube = xr.DataArray(data, dims=("time", "y", "x"),
                        coords={"time": pd.date_range("2013-01-01", periods=96, freq="MS")})
    cube_bytes = 96 * 800 * 800 * 4
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ds = PatchSequences(cube, patch=50, stride=10)
        assert len(ds) == count_sequences(96, 800, 800) == 514_064
        seen = 0
        for inputs, targets, valid in torch.utils.data.DataLoader(ds.split("train"), batch_size=64):
            seen += inputs.shape[0]
            if seen >= 1500:
                break
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert seen >= 1500
    assert peak < 100e6 < cube_bytes, f"peak {peak / 1e6:.0f} MB while streaming a {cube_bytes / 1e6:.0f} MB cube"
