"""Benchmark: what the training data of a residual model costs, cut on demand or held whole.

``glacierxr train`` forecasts a residual on a baseline by default. Its training windows used to be
built whole in memory (:func:`glacierxr.ml.models.residual.residual_dataset` of
:func:`~glacierxr.ml.models.residual.window_inputs`): with the default patches (50 px, stride
10) every pixel stands in 25 patches and 8 time windows, so those arrays grow to hundreds of
times the cube. :class:`glacierxr.ml.models.residual.ResidualWindows` holds the cube once and
cuts a batch when the loader asks for it. Measured in one run, on the same cube and split:

* ``training_data_peak_memory``: the peak of memory allocated (``tracemalloc``) while the
  training and validation data of a snow-state residual model are prepared and one batch is
  drawn, the windows cut on demand, against building them whole; ratio = on demand / whole;
* ``seconds_per_batch``: drawing one shuffled batch of 32 through a ``DataLoader``, cut on demand
  against held whole (the cost of cutting, to set beside a model step of about a second on CPU).

``--quick``: 36 months of 150 x 130 px; full size: 36 months of 300 x 260 px (about a twelfth
of Parvati's box in ``docs/your-glacier.md``, which is 1 050 x 860 px). Prints one JSON object
per line (``benchmarks/run.py`` collects them).

    python benchmarks/residual_windows.py --quick
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc



def emit(metric: str, value, unit: str, **extra) -> None:
    print(json.dumps({"benchmark": "residual_windows", "metric": metric, "value": value, "unit": unit, **extra}),
          flush=True)


def cube(months: int, height: int, width: int):
    """benchmarks/snowstate.py's monthly snow masks, ``height`` x ``width`` px, labelled monthly."""
    from snowstate import cube as snow_masks  # benchmarks/ is on the path of a script run from it

    da = snow_masks(months, height, width)
    da.attrs["months"] = 1
    return da


def prepare(sequences, model, *, on_demand: bool):
    """The training and validation data of ``model`` (the pipeline's way, or held whole)."""
    from glacierxr import pipeline
    from glacierxr.ml.models.residual import residual_dataset, window_inputs
    from glacierxr.ml.snowstate import fit_for

    if on_demand:
        windows = pipeline._window_cutter(sequences)
        return pipeline._training_data(sequences, model, lambda: windows)
    snow_state = fit_for(sequences)
    return tuple(residual_dataset(window_inputs(sequences, split, model.baseline, snow_state=snow_state),
                                  model.baseline, model.scale, offset=model.offset, context=model.context)
                 for split in ("train", "val"))


def first_batch(data):
    import torch

    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    return next(iter(loader))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    months, height, width = (36, 150, 130) if args.quick else (36, 300, 260)

    import torch

    from glacierxr import pipeline
    from glacierxr.config import RunConfig
    from glacierxr.ml.models import get_model
    from glacierxr.ml.models.residual import ResidualForecaster

    torch.set_num_threads(1)
    da = cube(months, height, width)
    config = RunConfig()  # the defaults of glacierxr train: 50 px patches, stride 10
    sequences = pipeline.make_sequences(da, config)
    model = ResidualForecaster(get_model("convlstm", hidden_channels=(4,)), input_steps=4, baseline="snow_state",
                               scale=0.3, context=("climatology", "scene_anomaly"), offset=0.5)
    shape = f"{months} x {height} x {width}, {len(sequences.split('train'))} training windows"

    peaks, data = {}, {}
    for on_demand in (True, False):
        tracemalloc.start()
        data[on_demand] = prepare(sequences, model, on_demand=on_demand)
        first_batch(data[on_demand][0])
        peaks[on_demand] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    emit("training_data_peak_memory", round(peaks[True] / 2**20, 1), "MiB",
         baseline="the same windows built whole (residual_dataset of window_inputs)",
         baseline_value=round(peaks[False] / 2**20, 1), ratio=round(peaks[True] / peaks[False], 4),
         cube_mib=round(da.size * 4 / 2**20, 1), note=f"snow-state residual, default patches, {shape}")

    seconds = {}
    for on_demand in (True, False):
        loader = torch.utils.data.DataLoader(data[on_demand][0], batch_size=32, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        batches = iter(loader)
        next(batches)
        started = time.perf_counter()
        for _ in range(20):
            next(batches)
        seconds[on_demand] = (time.perf_counter() - started) / 20
    emit("seconds_per_batch", round(seconds[True], 4), "s", baseline="held whole",
         baseline_value=round(seconds[False], 4), ratio=round(seconds[True] / seconds[False], 2),
         note="a shuffled batch of 32 through a DataLoader")


if __name__ == "__main__":
    main()
