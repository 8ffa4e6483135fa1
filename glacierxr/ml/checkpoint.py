"""Checkpoints: atomic writes, safe (``weights_only``) loading, inference exports.

A glacierxr checkpoint is a plain ``dict`` saved with :func:`torch.save`.  It holds only tensors
and plain Python values (``dict``, ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool``,
``None``) so that it loads with ``torch.load(..., weights_only=True)``: opening a checkpoint never
runs code from the file.

Two kinds share one layout:

``"model"``
    Written by :func:`save_model`: what inference needs (weights, the model configuration from
    ``model.get_config()``, the data normalization, versions, a SHA-256 of the weights and one
    of everything that shapes a prediction: weights, config and normalization).
``"training"``
    Written every epoch by :class:`glacierxr.ml.train.Trainer` (``last.pt``, ``best.pt``): the same
    plus the optimizer, the epoch, the random-number-generator states and the history, so that a
    run resumes exactly where it stopped.

Both load with :func:`load_model`.

Every write is atomic: the file is written to a temporary file in the same folder
(``.<name>.partial-<random>``), flushed and ``fsync``-ed, then moved over the target with
:func:`os.replace`.  A crash at any moment leaves
either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from glacierxr._safety import partial_path, storage_errors
from glacierxr.errors import CheckpointError, ConfigError, ModelError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "atomic_save",
    "atomic_write_text",
    "checkpoint_sha256",
    "load_checkpoint",
    "load_model",
    "model_config",
    "payload_sha256",
    "save_model",
    "weights_sha256",
]

#: Value of the ``"format"`` key of every glacierxr checkpoint.
FORMAT = "glacierxr-checkpoint"
#: Layout version; bumped when keys change meaning.
FORMAT_VERSION = 1

_REQUIRED_KEYS = ("format", "format_version", "kind", "config", "model_state", "weights_sha256")


# --------------------------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------------------------
def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a checkpoint file's bytes, as recorded by the predict step.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> _ = path.write_bytes(b"abc")
    >>> checkpoint_sha256(path)[:16]
    'ba7816bf8f01cfea'
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as error:
        raise CheckpointError(
            f"No checkpoint at {str(path)!r}. Check the path (or train a model first)."
        ) from error
    return digest.hexdigest()


def weights_sha256(weights) -> str:
    """SHA-256 (hex) of a model's weights: a ``torch.nn.Module`` or a ``state_dict``.

    Keys are hashed in sorted order with each tensor's raw bytes, so the digest depends on the
    values only (not on the file, the device or the process).  It equals the digest that
    :mod:`glacierxr.ml.predict` computes for a model without a checkpoint.

    Examples
    --------
    >>> import torch
    >>> layer = torch.nn.Linear(2, 1)
    >>> weights_sha256(layer) == weights_sha256(layer.state_dict())
    True
    """
    import torch

    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key]
        digest.update(str(key).encode())
        if isinstance(tensor, torch.Tensor):
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        else:  # extra state stored by some modules: hash its text form
            digest.update(repr(tensor).encode())
    return digest.hexdigest()


def _canonical(value: Any, digest) -> None:
    """Feed a plain checkpoint value to ``digest`` in a form that depends on its content only."""
    import torch

    if isinstance(value, torch.Tensor):
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"tensor{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _canonical(value[key], digest)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _canonical(item, digest)
        digest.update(b"]")
    else:  # None, bool, int, float, str: repr is exact (floats round-trip)
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def payload_sha256(payload: Mapping) -> str:
    """SHA-256 (hex) of everything in a checkpoint that shapes a prediction.

    That is the weights (:func:`weights_sha256`), the model configuration that rebuilds the
    network and the data normalization applied before and after it. Stored as
    ``"payload_sha256"`` by :func:`build_payload` and checked by :func:`load_checkpoint`, so
    editing the stored normalization (or config) is detected like damaged weights are.

    Examples
    --------
    >>> import torch
    >>> state = {"w": torch.ones(2)}
    >>> a = payload_sha256({"model_state": state, "config": {"name": "m"}, "normalization": {"mean": 0.5, "std": 2.0}})
    >>> b = payload_sha256({"model_state": state, "config": {"name": "m"}, "normalization": {"mean": 0.5, "std": 3.0}})
    >>> a == b
    False
    """
    digest = hashlib.sha256()
    digest.update(weights_sha256(payload["model_state"]).encode())
    for key in ("config", "normalization"):
        digest.update(key.encode())
        _canonical(payload.get(key), digest)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------
def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _atomic_target(path: Path, mode: str, *, needed: int | None = None):
    """Yield an open temporary file beside ``path``; on success fsync it and move it over ``path``.

    A full disk, a read-only file system or a folder without write permission raises
    :class:`~glacierxr.errors.StorageError` (naming the path, ``needed`` bytes and the fix).
    """
    with storage_errors(path, needed=needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        # ``.<name>.partial-<random>``: what a killed save leaves, removed by the next locked
        # writer of ``path`` (:func:`glacierxr._safety.clean_stale`)
        temporary = partial_path(path)
        handle = open(temporary, mode.replace("w", "x"))
        try:
            with handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
    _fsync_directory(path.parent)


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a payload (what a checkpoint file needs, roughly)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def atomic_save(obj: Mapping, path: str | os.PathLike) -> Path:
    """Save ``obj`` with :func:`torch.save` atomically (temp file, fsync, :func:`os.replace`).

    If anything fails (full disk, a crash, Ctrl-C) the previous file at ``path`` is left as it
    was and the temporary file is removed; a full disk, a read-only file system or a missing
    write permission raise :class:`~glacierxr.errors.StorageError` (also an ``OSError``).

    Parameters
    ----------
    obj : mapping
        Tensors and plain Python values only (see the module docstring).
    path : path-like
        Target file; its folder is created if needed.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import torch

    path = Path(path)
    with _atomic_target(path, "wb", needed=_tensor_bytes(obj)) as handle:
        torch.save(obj, handle)
    return path


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    with _atomic_target(path, "w") as handle:
        handle.write(text)
    return path


# --------------------------------------------------------------------------------------------
# payloads
# --------------------------------------------------------------------------------------------
def to_plain(value: Any, *, where: str = "value") -> Any:
    """Convert ``value`` to what ``torch.load(weights_only=True)`` accepts.

    numpy scalars become Python numbers, numpy arrays become tensors, paths become strings;
    mappings, lists and tuples are converted recursively (mapping keys that are numbers stay
    numbers: optimizer states are keyed by parameter index).  Anything else raises
    :class:`CheckpointError` naming where it was found.
    """
    import torch

    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {
            (k if isinstance(k, (str, int, float, bool)) else str(k)): to_plain(v, where=f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [to_plain(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(to_plain(v, where=f"{where}[{i}]") for i, v in enumerate(value))
    raise CheckpointError(
        f"Cannot store {where} of type {type(value).__name__} in a checkpoint: only tensors, "
        "numbers, strings, None, lists, tuples and dicts load safely with weights_only=True. "
        "Convert it to one of those first."
    )


def model_config(model) -> dict:
    """``model.get_config()`` as a plain dict with a ``"name"`` key (what rebuilds the model)."""
    get_config = getattr(model, "get_config", None)
    if not callable(get_config):
        raise ModelError(
            f"{type(model).__name__} has no get_config() method, so a checkpoint could not "
            "rebuild it. Use a model from glacierxr.ml.get_model(...) or add get_config() "
            "returning {'name': ..., **constructor_arguments}."
        )
    config = to_plain(dict(get_config()), where="model.get_config()")
    if "name" not in config:
        raise ModelError(
            f"{type(model).__name__}.get_config() has no 'name' key (found {sorted(config)}). "
            "It must return {'name': <registry name>, **constructor_arguments}."
        )
    return config


def versions() -> dict:
    """Package versions stored with every checkpoint: :func:`glacierxr.pipeline.versions`."""
    from glacierxr.pipeline import versions as package_versions  # the one record of versions

    return package_versions()


def cpu_state_dict(model) -> dict:
    """A detached CPU copy of ``model.state_dict()`` (safe to keep while training goes on)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


def build_payload(
    model,
    *,
    kind: str,
    state: Mapping | None = None,
    normalization: Any = None,
    extra: Mapping | None = None,
    **fields: Any,
) -> dict:
    """The common part of every checkpoint; ``fields`` are added (converted to plain values)."""
    state = cpu_state_dict(model) if state is None else dict(state)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": model_config(model),
        "model_state": state,
        "weights_sha256": weights_sha256(state),
        "normalization": to_plain(normalization, where="normalization"),
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extra": to_plain(dict(extra or {}), where="extra"),
    }
    for key, value in fields.items():
        payload[key] = to_plain(value, where=key)
    payload["payload_sha256"] = payload_sha256(payload)
    return payload


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def load_checkpoint(
    path: str | os.PathLike, *, map_location: Any = "cpu", verify: bool = True
) -> dict:
    """Load and validate a glacierxr checkpoint with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    path : path-like
        A file written by :func:`save_model` or by the :class:`~glacierxr.ml.train.Trainer`.
    map_location : str or torch.device
        Where tensors are loaded (default CPU).
    verify : bool
        Recompute the SHA-256 of the weights and compare it with the stored one.

    Returns
    -------
    dict
        The checkpoint (keys ``config``, ``model_state``, ``normalization``, ``versions`` … and,
        for training checkpoints, ``epoch``, ``optimizer_state``, ``rng``, ``history`` …).

    Raises
    ------
    CheckpointError
        Missing, truncated or corrupt file; a file that is not a glacierxr checkpoint; a file
        holding objects that are not safe to load; weights that do not match their SHA-256.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {str(path)!r}"
            + (" (it is a folder)" if path.is_dir() else "")
            + ". Check the path, or train first (Trainer(checkpoint_dir=...) writes last.pt, "
            "best.pt and model.pt)."
        )
    try:
        with warnings.catch_warnings():  # torch warns before it fails on a corrupt file
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe is None:
            raise _corrupt(path, error) from error
        raise CheckpointError(
            f"Refusing to load {str(path)!r}: it holds a Python object ({unsafe.group(1)}) that "
            "only full unpickling could rebuild, and glacierxr loads checkpoints with "
            "torch.load(weights_only=True) so that opening a file never runs code from it. "
            "If you trust the file, rebuild the model yourself and re-save it with "
            "glacierxr.ml.checkpoint.save_model(model, path)."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as error:
        raise _corrupt(path, error) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a glacierxr checkpoint (found: {found}). A bare state_dict "
            "cannot rebuild a model: load it into your model with model.load_state_dict(...) "
            "and save it with glacierxr.ml.checkpoint.save_model(model, path)."
        )
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} lacks the keys {missing}; it is damaged or from an "
            "incompatible glacierxr version. Delete it or pass resume=False."
        )
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} has format version {payload['format_version']}, newer than "
            f"this glacierxr understands ({FORMAT_VERSION}); it was written by glacierxr "
            f"{payload.get('versions', {}).get('glacierxr', '?')}. Upgrade glacierxr."
        )
    if verify:
        _verify_hashes(payload, path)
    return payload


def _verify_hashes(payload: Mapping, path: Path) -> None:
    """Raise CheckpointError when the weights, or config + normalization, do not match their
    recorded SHA-256 (checkpoints written before ``payload_sha256`` existed: weights only)."""
    actual = weights_sha256(payload["model_state"])
    if actual != payload["weights_sha256"]:
        raise CheckpointError(
            f"The weights in {str(path)!r} do not match their recorded SHA-256 "
            f"(stored {payload['weights_sha256'][:12]}…, computed {actual[:12]}…): the file "
            "is corrupt. Delete it or use another copy (best.pt / model.pt)."
        )
    stored = payload.get("payload_sha256")
    if stored is not None and payload_sha256(payload) != stored:
        raise CheckpointError(
            f"The model configuration or data normalization in {str(path)!r} do not match their "
            f"recorded SHA-256 (stored {stored[:12]}…): the file was damaged or edited, and its "
            "predictions cannot be trusted. Use another copy, or retrain."
        )


def _corrupt(path: Path, error: BaseException) -> CheckpointError:
    size = path.stat().st_size
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return CheckpointError(
        f"Checkpoint {str(path)!r} ({size} bytes) is truncated or corrupt and cannot be read "
        f"({type(error).__name__}: {reason}). Delete it (or pass resume=False to train from "
        "scratch), or use another copy such as best.pt."
    )


def check_model_matches(payload: Mapping, model, *, path: str | os.PathLike = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``payload`` was written for a model like ``model``."""
    stored = dict(payload["config"])
    current = model_config(model)
    if stored != current:
        raise CheckpointError(
            f"{str(path)!r} was written for the model {stored}, but this model is {current}. "
            "Use a checkpoint of this model, another checkpoint_dir, or pass resume=False "
            "to train from scratch (or delete the old checkpoint)."
        )
    own = model.state_dict()
    theirs = payload["model_state"]
    wrong = sorted(set(own) ^ set(theirs))
    wrong += [k for k in own if k in theirs and tuple(own[k].shape) != tuple(theirs[k].shape)]
    if wrong:
        raise CheckpointError(
            f"{str(path)!r} does not fit this model: parameters {wrong[:5]}"
            f"{' …' if len(wrong) > 5 else ''} are missing, extra or shaped differently. "
            "The model code changed since it was written; retrain or pass resume=False."
        )


def _set_metadata(model, payload: Mapping, path: Path, sha256: str) -> None:
    normalization = payload.get("normalization")
    model.checkpoint_path = str(path)
    model.checkpoint_sha256 = sha256
    model.checkpoint_info = {
        key: payload.get(key)
        for key in ("kind", "config", "normalization", "versions", "created", "epoch", "extra")
    }
    # predict() reads ``model.normalization`` as (mean, std); expose it in that form when the
    # stored normalization is a {"mean": m, "std": s} mapping of numbers, as-is otherwise.
    if isinstance(normalization, Mapping) and {"mean", "std"} <= set(normalization):
        mean, std = normalization["mean"], normalization["std"]
        if isinstance(mean, (int, float)) and isinstance(std, (int, float)):
            normalization = (float(mean), float(std))
    model.normalization = normalization


def load_model(path: str | os.PathLike, *, map_location: Any = "cpu", model=None):
    """Rebuild a model from a checkpoint (a ``model.pt`` export or a training checkpoint).

    The model is rebuilt through the registry, ``glacierxr.ml.get_model(name, **config)``, from the
    stored ``get_config()``, loaded with ``weights_only=True`` and returned in eval mode.  It gets
    the attributes ``checkpoint_path``, ``checkpoint_sha256`` (of the file),
    ``normalization`` and ``checkpoint_info`` (config, versions, epoch …), which
    :func:`glacierxr.ml.predict.predict` records.

    Parameters
    ----------
    path : path-like
        Checkpoint file.
    map_location : str or torch.device
        Device of the returned model's tensors.
    model : torch.nn.Module, optional
        Load into this model instead of building one from the registry (for models outside the
        registry); its ``get_config()`` must equal the stored one.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    CheckpointError
        See :func:`load_checkpoint`; also a checkpoint of another model, or weights that do not
        fit the rebuilt model.
    """
    path = Path(path)
    payload = load_checkpoint(path, map_location=map_location)
    if model is None:
        config = dict(payload["config"])
        name = config.pop("name")
        from glacierxr.ml.models import get_model
        from glacierxr.ml.models.residual import from_config

        try:  # a residual model (ResidualForecaster) records its baseline and its inner model's config
            model = from_config(payload["config"]) if "baseline" in config else get_model(name, **config)
        except (ModelError, ConfigError) as error:
            raise CheckpointError(
                f"{str(path)!r} holds a model {name!r} with config {config} that this glacierxr "
                f"cannot build ({error}). It was written by glacierxr "
                f"{payload.get('versions', {}).get('glacierxr', '?')}; install that version."
            ) from error
    check_model_matches(payload, model, path=path)
    model.load_state_dict(payload["model_state"], strict=True)
    model.to(map_location)
    model.eval()
    _set_metadata(model, payload, path, checkpoint_sha256(path))
    return model


def save_model(
    model,
    path: str | os.PathLike,
    *,
    extra: Mapping | None = None,
    normalization: Any = None,
) -> Path:
    """Save ``model`` for inference (weights + config + normalization), atomically.

    Parameters
    ----------
    model : torch.nn.Module
        A model with ``get_config()`` (every model of :func:`glacierxr.ml.get_model` has one).
    path : path-like
        Target file, conventionally ``model.pt``.
    extra : mapping, optional
        More plain values to keep (training data, glacier name …), stored under ``"extra"``.
    normalization : optional
        The data normalization the model was trained with; default ``model.normalization``
        when the model has one.

    Returns
    -------
    pathlib.Path
        ``path``; reload with :func:`load_model`.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> class Tiny(torch.nn.Module):
    ...     def __init__(self, width=2):
    ...         super().__init__(); self.width = width; self.layer = torch.nn.Linear(width, 1)
    ...     def get_config(self):
    ...         return {"name": "tiny", "width": self.width}
    >>> path = save_model(Tiny(), pathlib.Path(tempfile.mkdtemp()) / "model.pt")
    >>> load_model(path, model=Tiny()).checkpoint_info["config"]
    {'name': 'tiny', 'width': 2}
    """
    if normalization is None:
        normalization = getattr(model, "normalization", None)
    payload = build_payload(model, kind="model", normalization=normalization, extra=extra)
    return atomic_save(payload, path)
