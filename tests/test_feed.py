"""The CPU side of the batched data path: reused batch buffers, the fused loss, prefetch order.

The batches and losses are checked against independent references written here: the per-sample
``DataLoader`` over the same view (single samples collated by torch), windows sliced by hand
from the prepared cube, and the masked squared error written with plain torch operations.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from glacierxr.ml._feed import BufferPool, SequenceFeed  # noqa: E402
from glacierxr.ml.train import _dense_sse, _masked_sse  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _train_view(seed: int = 0):
    from glacierxr.ml.patches import PatchSequences
    from glacierxr.testing import make_series

    values = np.random.default_rng(seed).normal(0.4, 0.3, (16, 26, 30)).astype("float32")
    values[np.random.default_rng(seed + 1).random(values.shape) < 0.1] = np.nan  # gaps, also in targets
    cube = make_series(values, freq="QS")
    return PatchSequences(cube, input_steps=2, target_steps=2, patch=8, stride=3).split("train")


def _same_bits(a, b) -> bool:
    a, b = a.contiguous(), b.contiguous()
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_buffer_pool__reuses_an_array_only_once_nothing_refers_to_it():
    pool = BufferPool(per_shape=2)
    first = pool.take((4, 3))
    address = first.data_ptr()
    held_view = first[1:]  # a view keeps the array held, like a batch a model keeps
    del first
    second = pool.take((4, 3))
    assert second.data_ptr() != address
    del held_view
    assert pool.take((4, 3)).data_ptr() == address  # free again: handed out again
    # saved by autograd: held until the graph is gone
    weight = torch.ones((), requires_grad=True)
    third = pool.take((4, 3)).fill_(2.0)
    product = third * weight
    saved_address = third.data_ptr()
    del third
    assert all(pool.take((4, 3)).data_ptr() != saved_address for _ in range(3))
    del product
    assert saved_address in {pool.take((4, 3)).data_ptr() for _ in range(2)}
    # more held than kept: one-off arrays, never a held one
    held = [pool.take((2,)) for _ in range(5)]
    assert len({t.data_ptr() for t in held}) == 5
    assert pool.take((2,), np.uint8).dtype == torch.uint8


def test_pooled_batches__same_bytes_as_per_sample_while_buffers_are_reused():
    """Consumed one at a time (as Trainer does), the reused buffers carry the DataLoader's bytes."""
    train = _train_view()
    train.set_epoch(2)
    expected = list(torch.utils.data.DataLoader(train, batch_size=32))
    feed = SequenceFeed(train, batch_size=32, device=torch.device("cpu"), resident=True, prefetch=False)
    addresses = []
    count = 0
    for reference, batch in zip(expected, feed.batches(2)):
        assert all(_same_bits(a, b) for a, b in zip(reference, batch))
        addresses.append(batch[0].data_ptr())
        count += 1
        del batch
    assert count == len(expected) > 4
    assert len(set(addresses)) < len(addresses)  # buffers were in fact reused


def test_pooled_batches__a_batch_kept_by_the_model_is_never_overwritten():
    train = _train_view()
    feed = SequenceFeed(train, batch_size=32, device=torch.device("cpu"), resident=True)
    kept, copies = [], []
    for index, batch in enumerate(feed.batches(1)):
        if index % 2 == 0:  # e.g. saved for a later backward or a callback
            kept.append(batch[0][:, -1:])
            copies.append(batch[0][:, -1:].clone())
    assert len(kept) > 2
    assert all(torch.equal(a, b) for a, b in zip(kept, copies))


def test_pooled_batches__windows_equal_slices_of_the_prepared_cube():
    train = _train_view()
    feed = SequenceFeed(train, batch_size=16, device=torch.device("cpu"), resident=True)
    feed._prepare()
    values, valid, _, _ = feed._host_cube.arrays
    region = feed._host_cube.region
    ids = train._ids[train._order(3)]
    t0, y0, x0 = train._layout.decompose(ids)
    rows = 0
    for inputs, targets, mask in feed.batches(3):
        for i in range(inputs.shape[0]):
            t, y, x = t0[rows] - region.t_lo, y0[rows] - region.y_lo, x0[rows] - region.x_lo
            window = np.s_[t : t + 4, y : y + 8, x : x + 8]
            np.testing.assert_array_equal(inputs[i, :, 0].numpy(), values[window][:2])
            np.testing.assert_array_equal(mask[i, :, 0].numpy(), valid[window][2:].astype(np.float32))
            np.testing.assert_array_equal(targets[i, :, 0].numpy(), np.where(valid[window][2:], values[window][2:], 0))
            rows += 1
    assert rows == len(train)


@pytest.mark.parametrize("resident", [True, False])
def test_prefetch__same_batches_in_the_same_order(resident):
    train = _train_view()
    train.set_epoch(1)
    expected = list(torch.utils.data.DataLoader(train, batch_size=24))
    feed = SequenceFeed(train, batch_size=24, device=torch.device("cpu"), resident=resident, prefetch=True)
    got = [tuple(t.clone() for t in batch) for batch in feed.batches(1)]
    assert len(got) == len(expected) > 4
    assert all(_same_bits(a, b) for one, other in zip(expected, got) for a, b in zip(one, other))


@pytest.mark.parametrize("pooled", [False, True])
def test_dense_sse__same_bits_as_the_masked_loss_and_its_gradient(pooled):
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(6, 3, 1, 9, 9, generator=generator)
    valid = (torch.rand(target.shape, generator=generator) > 0.3).float()
    dense_target = target * valid  # as PatchSequences gives them: 0 (or -0) where not observed
    target[valid == 0] = float("nan")  # the masked loss never looks there
    base = torch.randn(target.shape, generator=generator)
    pool = BufferPool() if pooled else None
    results = []
    for loss in ("masked", "dense"):
        prediction = base.clone().requires_grad_(True)
        sse, count = (_masked_sse(prediction, target, valid) if loss == "masked"
                      else _dense_sse(prediction, dense_target, valid, pool=pool))
        (sse * 0.5).backward()
        results.append((sse.detach(), float(count), prediction.grad))
    (masked_sse, masked_count, masked_grad), (dense_sse, dense_count, dense_grad) = results
    assert _same_bits(masked_sse, dense_sse) and masked_count == dense_count == float(valid.sum())
    assert torch.equal(masked_grad, dense_grad)  # equal values (a zero's sign may differ where not observed)
    # and against the formula: d(0.5 Σ v (p - t)²)/dp = v (p - t)
    torch.testing.assert_close(dense_grad, valid * (base - dense_target), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("broadcast", [False, True])
def test_fused_masked_sse__same_bits_as_the_masked_loss(broadcast):
    """The DataLoader path's loss: bool mask, NaN targets where not valid, possibly a broadcast mask."""
    from glacierxr.ml.train import _fused_masked_sse

    generator = torch.Generator().manual_seed(1)
    target = torch.randn(5, 3, 1, 7, 7, generator=generator)
    valid = torch.rand((5, 1, 1, 7, 7) if broadcast else target.shape, generator=generator) > 0.3
    target[~valid.expand_as(target)] = float("nan")
    base = torch.randn(target.shape, generator=generator)
    results = []
    for fused in (False, True):
        prediction = base.clone().requires_grad_(True)
        sse, count = (_fused_masked_sse(prediction, target, valid, pool=BufferPool()) if fused
                      else _masked_sse(prediction, target, valid))
        (sse * 0.25).backward()
        results.append((sse.detach(), count, prediction.grad))
    (sse_a, count_a, grad_a), (sse_b, count_b, grad_b) = results
    assert _same_bits(sse_a, sse_b) and int(count_a) == int(count_b) == int(valid.expand_as(target).sum())
    assert _same_bits(grad_a, grad_b)  # bit for bit, zeros where not valid included
    assert torch.isfinite(sse_b) and torch.isfinite(grad_b).all()
    expected = torch.where(valid, base - torch.nan_to_num(target), torch.zeros(())) * 0.5
    torch.testing.assert_close(grad_b, expected, rtol=1e-6, atol=1e-7)


def test_dense_sse__its_backward_runs_once():
    prediction = torch.rand(2, 2, 1, 3, 3, requires_grad=True)
    sse, _ = _dense_sse(prediction, torch.zeros(2, 2, 1, 3, 3), torch.ones(2, 2, 1, 3, 3), pool=BufferPool())
    sse.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        sse.backward()


def test_trainer__training_validation_and_loss_share_one_pool_across_fits():
    """Validation batches reuse the training batches' buffers; a second fit reuses the first's."""
    from _toy_training import TinyForecaster

    from glacierxr.ml.patches import PatchSequences
    from glacierxr.ml.train import Trainer
    from glacierxr.testing import make_series

    values = np.random.default_rng(0).normal(0.4, 0.3, (16, 26, 30)).astype("float32")
    sequences = PatchSequences(make_series(values, freq="QS"), input_steps=2, target_steps=2, patch=8, stride=3)
    trainer = Trainer(TinyForecaster(input_steps=2), max_epochs=1, batch_size=16, device="cpu", progress=False,
                      cube_on_device=True)
    trainer.fit(sequences.split("train"), sequences.split("val"))
    feeds = list(trainer._feeds.values())
    assert len(feeds) == 2 and all(feed._pool is trainer._buffers for feed in feeds)
    kept = {key: len(arrays) for key, arrays in trainer._buffers._arrays.items()}
    assert kept and all(count <= 8 for count in kept.values())  # a few batches' worth, not one per batch
    trainer.fit(sequences.split("train"), sequences.split("val"))
    assert {key: len(arrays) for key, arrays in trainer._buffers._arrays.items()} == kept


def test_unpack__finite_sum_shortcut_keeps_the_exact_checks():
    """The one-pass check (a finite sum) never lets a NaN through and never refuses finite data."""
    from _toy_training import TinyForecaster

    from glacierxr.ml.train import NonFiniteBatchError, Trainer

    trainer = Trainer(TinyForecaster(input_steps=2), max_epochs=1, device="cpu", progress=False)
    inputs, targets = torch.rand(4, 2, 1, 5, 5), torch.rand(4, 2, 1, 5, 5)
    valid = torch.ones_like(targets)
    valid[0, 0, 0, 0, 0] = 0.0

    def unpack(*batch):
        return trainer._unpack(batch, index=2, epoch=1, phase="training")

    huge = torch.full_like(inputs, 3e38)  # finite values whose float32 sum overflows
    assert unpack(huge, targets, valid)[0] is huge
    with_gap = targets.clone()
    with_gap[0, 0, 0, 0, 0] = float("nan")  # NaN where not valid: allowed, and not valid afterwards
    assert not unpack(inputs, with_gap, valid)[2][0, 0, 0, 0, 0]
    bad = inputs.clone()
    bad[1, 1, 0, 2, 2], bad[2, 0, 0, 1, 1] = float("inf"), float("-inf")  # sums to NaN
    with pytest.raises(NonFiniteBatchError, match="2 NaN/inf input pixel"):
        unpack(bad, targets, valid)
    with_gap[3, 1, 0, 4, 4] = float("nan")  # and one where valid
    with pytest.raises(NonFiniteBatchError, match="1 NaN/inf target pixel"):
        unpack(inputs, with_gap, valid)
