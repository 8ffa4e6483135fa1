"""The batched data path of :class:`glacierxr.ml.Trainer`: whole batches of patch sequences on the device.

:class:`SequenceFeed` turns a :class:`~glacierxr.ml.PatchSequences` view into batches
``(inputs, targets, valid_mask)`` of exactly ``batch_size`` sequences on the training device —
the same windows, in the same order and with the same bytes as ``DataLoader(view,
batch_size=batch_size)`` gives after collating single samples, but without any per-sample
Python:

* windows are cut with one fancy-indexing call per array from a
  :func:`~numpy.lib.stride_tricks.sliding_window_view` of a prepared block (normalised, NaN → 0,
  validity mask computed once per block, not per window);
* **resident** (``cube_on_device``): the region of the cube the view covers is read and prepared
  once per :meth:`~glacierxr.ml.Trainer.fit`; on CUDA it is copied to the GPU and every batch is
  gathered there (one indexing kernel per array, no host work besides the window offsets); on
  the CPU every batch is copied with one ``torch.index_select(..., out=)`` per array into
  buffers that are reused (:class:`BufferPool`) once nothing holds the batch they carried —
  a fresh 10 MB array per batch costs more in page faults than the copy itself;
* **streaming** (a lazy cube on the CPU, or one too large for the device): tiles are read and
  cut as :class:`~glacierxr.ml.PatchSequences` iteration does, in bounded memory; on CUDA each
  host batch is copied into a pinned buffer and sent with ``non_blocking=True`` on a separate
  copy stream while the model runs on the previous batch, and a background thread cuts the next
  batch meanwhile (``prefetch``).
"""

from __future__ import annotations

import math
import queue
import sys
import threading
from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["BufferPool", "SequenceFeed", "background", "is_sequences"]

#: Largest prepared region (values + mask, MB) kept resident on a CUDA device by ``"auto"``.
RESIDENT_CUDA_MB = 2048.0
#: Largest prepared region (MB) kept resident in host memory by ``"auto"`` for NumPy-backed cubes.
RESIDENT_HOST_MB = 2048.0


def is_sequences(data) -> bool:
    """True for a :class:`~glacierxr.ml.PatchSequences` view (the batched path applies)."""
    from glacierxr.ml.patches import PatchSequences

    return isinstance(data, PatchSequences)


def background(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a thread, ``depth`` items ahead; same items, same order, same errors."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as error:  # handed to the consumer, raised there
            items.put((done, error))

    thread = threading.Thread(target=produce, daemon=True, name="glacierxr-prefetch")
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


class BufferPool:
    """Reusable host arrays for batches and temporaries, handed out as CPU tensors.

    glibc serves a large allocation with fresh pages whenever it has given that memory back to the
    system (above its mmap threshold, or after trimming the heap), and on a small VM the page
    faults of a fresh 10 MB array cost far more than filling it (measured: 9 ms for the first touch
    against 0.6 ms to copy a batch into a reused array). The pool hands out the same arrays again,
    but only once nothing refers to them any more: a tensor made with :func:`torch.from_numpy`
    (and every view of it, and autograd's saved copies of it) keeps a reference to the array, so
    an array whose reference count is back to the pool's own is free. A batch the caller (or the
    model) still holds is therefore never overwritten; when all of a shape's arrays are held, a
    fresh one is returned.

    Parameters
    ----------
    per_shape : int
        Arrays kept per (shape, dtype); beyond that :meth:`take` returns one-off arrays.
    """

    def __init__(self, per_shape: int = 20) -> None:
        self.per_shape = int(per_shape)
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()  # a prefetch thread and the training loop take from one pool

    def take(self, shape: tuple[int, ...], dtype=np.float32):
        """A CPU tensor of ``shape`` and ``dtype`` backed by an array nobody else holds (contents undefined)."""
        import torch

        key = (tuple(int(n) for n in shape), np.dtype(dtype).str)
        with self._lock:
            arrays = self._arrays.setdefault(key, [])
            for index in range(len(arrays)):
                if _references(arrays, index) == _FREE:  # a tensor (or view) of it would add one
                    return torch.from_numpy(arrays[index])
            array = np.empty(key[0], dtype)
            if len(arrays) < self.per_shape:
                arrays.append(array)
            return torch.from_numpy(array)

    def clear(self) -> None:
        """Drop every kept array (tensors handed out stay valid)."""
        with self._lock:
            self._arrays.clear()


def _references(arrays: list, index: int) -> int:
    """Reference count of ``arrays[index]`` as seen from here (the list's and this call's own)."""
    return sys.getrefcount(arrays[index])


#: What :func:`_references` gives for an array only the pool's list holds (measured, not assumed:
#: the count of temporary references differs between Python versions).
_FREE = _references([np.empty(0)], 0)


def _window_rows(array: np.ndarray, length: int, patch: int):
    """``array`` (T, H, W) as a tensor of every window start: row ``k`` is the window at flat offset ``k``.

    A (T, H, W) window of ``length`` frames and ``patch`` × ``patch`` pixels starting at ``(t, y, x)``
    covers the flat offsets ``t·H·W + y·W + x + (i·H·W + j·W + l)``, so one strided view indexed by
    ``t·H·W + y·W + x`` along its first axis gives every window without copying
    (``torch.index_select`` copies the chosen rows into an ``out=`` buffer).
    """
    import torch

    t, h, w = array.shape
    span = (length - 1) * h * w + (patch - 1) * w + patch
    flat = torch.from_numpy(np.ascontiguousarray(array).reshape(-1))
    return torch.as_strided(flat, (max(flat.numel() - span + 1, 0), length, patch, patch), (1, h * w, w, 1))


class SequenceFeed:
    """Whole batches of one :class:`~glacierxr.ml.PatchSequences` view on ``device``.

    Parameters
    ----------
    view : PatchSequences
        A split view (its ``shuffle`` decides whether epochs are shuffled).
    batch_size : int
        Sequences per batch; every batch but the last has exactly this many.
    device : torch.device
        Where the batches go.
    resident : bool or "auto"
        Prepare the covered region of the cube once and cut batches from it (on the device
        when it is CUDA). ``"auto"``: for a NumPy-backed cube up to
        :data:`RESIDENT_HOST_MB`, and on CUDA for any cube up to :data:`RESIDENT_CUDA_MB`; a
        lazy cube on the CPU streams in bounded memory.
    prefetch : bool or "auto"
        Cut the next host batch in a background thread while the model runs (``"auto"``: on
        CUDA when streaming).
    check_tile : callable, optional
        Called with every prepared block (e.g. to refuse infinite values).
    pool : BufferPool, optional
        Where CPU batches of the resident path are copied (shared, e.g., by a trainer's training
        and validation feeds and its loss); default a pool of this feed's own.
    """

    def __init__(self, view, *, batch_size: int, device, resident="auto", prefetch="auto",
                 check_tile: Callable | None = None, pool: BufferPool | None = None) -> None:
        self.view = view
        self.batch_size = int(batch_size)
        self.device = device
        self.check_tile = check_tile
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        _, megabytes = view._resident_region()
        if resident == "auto":
            lazy = _is_lazy(view.data)
            resident = (self.cuda and megabytes <= RESIDENT_CUDA_MB) or (not lazy and megabytes <= RESIDENT_HOST_MB)
        self.resident = bool(resident)
        self.prefetch = (self.cuda and not self.resident) if prefetch == "auto" else bool(prefetch)
        self._host_cube = None
        self._device_cube = None
        self._copy_stream = None
        self._slots: list[dict] = []
        self._slot = 0
        self._pool = BufferPool() if pool is None else pool
        self._rows = None  # window views of the prepared host cube (CPU, resident)

    def __len__(self) -> int:
        return math.ceil(len(self.view) / self.batch_size)

    @property
    def mode(self) -> str:
        """``"resident"`` (gathered from a prepared copy) or ``"streaming"``, and where."""
        where = "device" if self.resident and self.cuda else "host"
        return f"{'resident' if self.resident else 'streaming'} ({where})"

    # ------------------------------------------------------------------ preparation
    def _prepare(self) -> None:
        if not self.resident or self._host_cube is not None or self._device_cube is not None:
            return
        tile = self.view._prepare_resident()
        if self.check_tile is not None:
            tile = self.check_tile(tile) or tile
        if self.cuda:
            import torch

            values, valid = (torch.from_numpy(a).to(self.device) for a in tile.arrays[:2])
            self._device_cube = (tile.region, values, valid)
        else:
            self._host_cube = tile

    # ------------------------------------------------------------------ batches
    def batches(self, epoch: int) -> Iterator[tuple]:
        """``(inputs, targets, valid_mask)`` tensors on the device for one epoch, in order."""
        self._prepare()
        if self._device_cube is not None:
            yield from self._device_batches(epoch)
            return
        if self._host_cube is not None and not self.cuda:
            pooled = self._pooled_batches(epoch)
            yield from background(pooled) if self.prefetch else pooled
            return
        host = self.view._train_batches(self.batch_size, epoch=epoch, resident=self._host_cube,
                                        check_tile=None if self.resident else self.check_tile)
        if self.prefetch:
            host = background(host)
        if not self.cuda:
            import torch

            for arrays in host:
                yield tuple(torch.from_numpy(a) for a in arrays)
            return
        yield from self._uploaded(host)

    def _pooled_batches(self, epoch: int) -> Iterator[tuple]:
        """Gather every batch from the prepared host cube into reused buffers (CPU, resident).

        The same windows and bytes as :meth:`PatchSequences._train_batches` cuts from the same
        prepared tile (inputs from the values, targets and mask from their prepared copies), one
        ``index_select`` per array into a :class:`BufferPool` buffer instead of a fresh array.
        """
        import torch

        view, layout, tile = self.view, self.view._layout, self._host_cube
        p, t_in, t_out = layout.patch, layout.input_steps, layout.target_steps
        if self._rows is None:
            values, _, targets, mask = tile.arrays
            self._rows = (_window_rows(values, t_in, p), _window_rows(targets, t_out, p),
                          _window_rows(mask, t_out, p))
        _, h, w = tile.arrays[0].shape
        region = tile.region
        order = view._order(epoch)
        for start in range(0, order.size, self.batch_size):
            t0, y0, x0 = layout.decompose(view._ids[order[start : start + self.batch_size]])
            offsets = ((t0 - region.t_lo) * h + y0 - region.y_lo) * w + x0 - region.x_lo
            first = torch.from_numpy(offsets.astype(np.int64))
            later = first + t_in * h * w
            yield tuple(self._cut(rows, index) for rows, index in zip(self._rows, (first, later, later)))

    def _cut(self, rows, index):
        """Rows ``index`` of a window view copied into a pooled ``(n, length, 1, p, p)`` tensor."""
        import torch

        n, (length, p, _) = index.numel(), rows.shape[1:]
        out = self._pool.take((n, length, 1, p, p), np.float32)
        torch.index_select(rows, 0, index, out=out.view(n, length, p, p))
        return out

    def _device_batches(self, epoch: int) -> Iterator[tuple]:
        """Gather every batch on the device from the resident cube (CUDA)."""
        import torch

        view = self.view
        layout = view._layout
        region, values, valid = self._device_cube
        p, t_in, t_out = layout.patch, layout.input_steps, layout.target_steps
        windows = values.unfold(1, p, 1).unfold(2, p, 1)  # (T, H', W', p, p) view, no copy
        masks = valid.unfold(1, p, 1).unfold(2, p, 1)
        order = view._order(epoch)
        for start in range(0, order.size, self.batch_size):
            ids = view._ids[order[start : start + self.batch_size]]
            t0, y0, x0 = layout.decompose(ids)
            offsets = np.stack([t0 - region.t_lo, y0 - region.y_lo, x0 - region.x_lo]).astype(np.int64)
            t, y, x = torch.from_numpy(offsets).to(self.device, non_blocking=True)
            y, x = y[:, None], x[:, None]
            t_inputs = t[:, None] + torch.arange(t_in, device=self.device)
            t_targets = t[:, None] + torch.arange(t_in, t_in + t_out, device=self.device)
            inputs = windows[t_inputs, y, x]
            targets = windows[t_targets, y, x]
            mask = masks[t_targets, y, x].to(torch.float32)
            targets = targets * mask  # the same operation as on the host: missing targets are 0
            yield inputs[:, :, None], targets[:, :, None], mask[:, :, None]

    def _uploaded(self, host: Iterator) -> Iterator[tuple]:
        """Pinned host buffers → device on a copy stream, one batch ahead of the model (CUDA).

        The copy of batch ``i + 1`` is queued on the copy stream before batch ``i`` is handed to
        the model, so it runs while the model computes; the compute stream waits only for the
        event of the batch it is about to use.
        """
        import torch

        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
            self._slots = [{"buffers": None, "event": None} for _ in range(3)]
        compute = torch.cuda.current_stream(self.device)
        pending = None
        for arrays in host:
            uploaded = self._upload(arrays)
            if pending is not None:
                yield self._ready(pending, compute)
            pending = uploaded
        if pending is not None:
            yield self._ready(pending, compute)

    def _upload(self, arrays) -> tuple[tuple, object]:
        """Copy one host batch into a pinned buffer and queue its transfer; ``(tensors, event)``."""
        import torch

        slot = self._slots[self._slot % len(self._slots)]
        self._slot += 1
        if slot["event"] is not None:
            slot["event"].synchronize()  # the transfer out of this buffer has finished
        shapes = [a.shape for a in arrays]
        if slot["buffers"] is None or [tuple(b.shape) for b in slot["buffers"]] != shapes:
            dtypes = [torch.from_numpy(a[:0]).dtype for a in arrays]
            slot["buffers"] = [torch.empty(a.shape, dtype=d, pin_memory=True) for a, d in zip(arrays, dtypes)]
        for buffer, array in zip(slot["buffers"], arrays):
            np.copyto(buffer.numpy(), array)
        with torch.cuda.stream(self._copy_stream):
            tensors = tuple(buffer.to(self.device, non_blocking=True) for buffer in slot["buffers"])
            event = torch.cuda.Event()
            event.record(self._copy_stream)
        slot["event"] = event
        return tensors, event

    def _ready(self, pending: tuple, compute) -> tuple:
        tensors, event = pending
        compute.wait_event(event)  # only this batch's transfer, not the one queued after it
        for tensor in tensors:
            tensor.record_stream(compute)  # allocated on the copy stream, used on the compute one
        return tensors


def _is_lazy(da) -> bool:
    import dask

    return dask.is_dask_collection(da.data)
