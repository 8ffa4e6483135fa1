"""Security hygiene: tokens stay secret, checkpoints and configs are parsed safely, outputs stay put.

- SAS tokens never appear in logs (DEBUG included), error messages, warnings or output attrs,
  nor in the files written from a cube loaded with signed hrefs.
- Checkpoints are opened with ``torch.load(weights_only=True)`` everywhere; a malicious pickle
  does not run.
- Configuration files are parsed with :mod:`tomllib` only; no ``eval``/``exec``/``pickle``/
  ``yaml.load`` anywhere in the package.
- Everything the library and the CLI write stays inside the path the user chose (nothing in
  the working directory or next to it), and :func:`glacierxr.io.write` never writes through a
  symlink to somewhere else.
"""

from __future__ import annotations

import ast
import copy
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import glacierxr as gx
from glacierxr import io as gio
from glacierxr._remote import redact
from glacierxr import stac
from glacierxr.errors import AssetReadError, CheckpointError, ConfigError
from glacierxr.testing import make_scene_cube, make_series

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faultserver import FaultyRangeServer  # noqa: E402

PACKAGE = Path(gx.__file__).resolve().parent
SECRET = "SECRETsig0xDEADBEEF"
TOKEN = f"st=2025-01-01&se=2099-01-01&sp=rl&sv=2024-05-04&sr=c&sig={SECRET}"


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(gio.reader, "RETRY_BACKOFF_S", 0.01)
    monkeypatch.setattr(gio.reader, "READ_TIMEOUT_S", 1.0)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("security-sample")
    catalog = gx.sample.write_catalog(root, seed=2, width=32, height=32, start="2020-06-01", end="2020-08-31")
    items = gx.search(datetime=None, max_cloud=None, catalog=catalog, sign=False)
    documents = [item.to_dict(include_self_link=False, transform_hrefs=False) for item in items]
    for document in documents:
        document["links"] = []
        for asset in document["assets"].values():
            asset["href"] = Path(asset["href"]).relative_to(root).as_posix()
    return root, documents


def _signed(documents, base: str, *, run: int = 0) -> list[dict]:
    """Items whose hrefs carry a SAS-like token; ``run`` makes new URLs (GDAL caches reads)."""
    out = copy.deepcopy(documents)
    for document in out:
        for asset in document["assets"].values():
            asset["href"] = f"{base}{asset['href']}?run={run}&{TOKEN}"
    return out


# ------------------------------------------------------------------------------------------
# tokens
# ------------------------------------------------------------------------------------------
@pytest.mark.network
def test_security__tokens_never_reach_logs_errors_warnings_attrs_or_files(sample, tmp_path, caplog):
    root, documents = sample
    caplog.set_level(logging.DEBUG)  # the most a user can turn on
    with FaultyRangeServer(root) as server:
        base = server.base_url
        items = _signed(documents, base)
        cube = gx.load(items)
        computed = cube.compute()
        # a failing asset: the error and the skip warning name it without the token
        server.fault("status", status=503, times=1000, path_contains="SR_B6")
        with pytest.raises(AssetReadError) as info:
            gx.load(_signed(documents, base, run=1)).swir16.compute()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            masked = gx.load(_signed(documents, base, run=2), on_error="skip").glacier.mask(max_missing=1.0)
    snow = masked.glacier.ndsi().glacier.snow_mask()
    path = gx.io.write(snow.to_dataset(), tmp_path / "snow.zarr")
    texts = {
        "log records": caplog.text,
        "error": str(info.value) + repr(info.value),
        "warnings": " ".join(str(w.message) for w in caught),
        "cube attrs": repr(cube.attrs) + repr(computed.attrs),
        "coords": " ".join(str(v) for name in computed.coords for v in np.ravel(computed[name].values)[:50]),
        "masked attrs": repr(masked.attrs),
        "snow attrs": repr(snow.attrs),
        "written store": " ".join(p.read_bytes().decode("latin-1") for p in path.rglob("*") if p.is_file()),
    }
    assert "SR_B6" in texts["error"] and "SR_B6" in texts["warnings"]  # named, not hidden
    assert "rasterio" in caplog.text or "stackstac" in caplog.text  # DEBUG logs were captured
    leaks = [where for where, text in texts.items() if SECRET in text]
    assert not leaks, f"the SAS signature leaked into: {leaks}"


def test_security__redaction_filter_covers_rasterio_and_stackstac_debug_records(caplog):
    import rasterio  # noqa: F401  (their loggers exist once the packages are imported)
    import stackstac  # noqa: F401
    import urllib3  # noqa: F401

    stac.redact_tokens_in_logs()
    caplog.set_level(logging.DEBUG)
    for name in ("rasterio._base", "rasterio._env", "stackstac.timer", "urllib3.connectionpool"):
        logging.getLogger(name).debug(
            "Dataset <open DatasetReader name='https://acc.blob.core.windows.net/c/x.TIF?%s'>", TOKEN
        )
    assert caplog.records and SECRET not in caplog.text
    assert "x.TIF" in caplog.text  # the message is kept, only the token goes


def test_security__reader_and_errors_pickle_without_tokens():
    import pickle

    error = AssetReadError(redact(f"Could not read 'https://a.blob.core.windows.net/c/x.tif?{TOKEN}'"))
    assert SECRET not in pickle.dumps(error).decode("latin-1")


# ------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------
def test_security__every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id == "torch":
                    keywords = {k.arg: k.value for k in node.keywords}
                    safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                    calls.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", safe))
    assert calls, "no torch.load call found: the scan is broken"
    assert all(safe for _, safe in calls), [where for where, safe in calls if not safe]


def test_security__checkpoint_loaders_pass_weights_only_at_run_time(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from glacierxr.ml.checkpoint import load_checkpoint, load_model, save_model
    from glacierxr.ml.models import get_model

    path = save_model(get_model("convlstm", hidden_channels=(2,), output_steps=1), tmp_path / "model.pt")
    seen = []
    original = torch.load

    def recording(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    load_checkpoint(path)
    load_model(path)
    assert seen and all(value is True for value in seen)


class _Exploit:
    """Unpickling this calls ``Path.touch`` on a marker file: code execution if it ever loads."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_security__malicious_pickle_checkpoint_does_not_run(tmp_path):
    torch = pytest.importorskip("torch")
    from glacierxr.ml.checkpoint import load_checkpoint, load_model

    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"config": {"name": "convlstm"}, "model_state": {}, "payload": _Exploit(marker)}, evil)
    for loader in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="weights_only|safe"):
            loader(evil)
    from glacierxr.cli import main

    assert main(["predict", "--data", str(tmp_path / "none.zarr"), "--checkpoint", str(evil), "--out", str(tmp_path / "o.zarr")]) != 0
    assert not marker.exists(), "unpickling ran code from the checkpoint"


# ------------------------------------------------------------------------------------------
# configuration files
# ------------------------------------------------------------------------------------------
def test_security__no_eval_exec_pickle_or_yaml_in_the_package():
    banned = {"eval", "exec"}
    unsafe = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in banned:
                    unsafe.append(f"{path.name}:{node.lineno} {func.id}()")
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    dotted = f"{func.value.id}.{func.attr}"
                    if dotted in {"pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "marshal.loads", "os.system"}:
                        unsafe.append(f"{path.name}:{node.lineno} {dotted}()")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                if any(n and n.split(".")[0] in {"yaml", "marshal", "shelve", "dill"} for n in names):
                    unsafe.append(f"{path.name}:{node.lineno} import {names}")
    assert not unsafe, unsafe


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[train]\nmax_epochs = \"__import__('os').system('touch PWNED')\"\n", "wrong type"),
        ("!!python/object/apply:os.system ['touch PWNED']\n", "not valid toml"),
        ("[train]\nmax_epochs = 3\n[__class__]\nx = 1\n", "unknown section"),
        ("[model]\nname = \"convlstm\"\n__init__ = 1\n", "__init__"),
        ("[data]\ncatalog = 1\n", "wrong type"),
    ],
)
def test_security__config_files_are_data_never_code(tmp_path, monkeypatch, text, fragment):
    from glacierxr.config import load_config

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.toml"
    path.write_text(text)
    try:
        config = load_config(path)
    except ConfigError as error:
        assert fragment.lower() in str(error).lower()
    else:  # accepted: then the odd value is kept as plain data and must be refused downstream
        assert fragment == "__init__" and config.model.params == {"__init__": 1}
        with pytest.raises(gx.errors.ModelError, match="__init__"):
            gx.ml.get_model(config.model.name, **config.model.params)
    assert not (tmp_path / "PWNED").exists()


# ------------------------------------------------------------------------------------------
# outputs stay where the user chose
# ------------------------------------------------------------------------------------------
def _snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_security__sample_writes_only_inside_its_folder(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "a" / "sample"
    gx.sample.write_catalog(out, seed=1, width=32, height=32, start="2020-06-01", end="2020-07-31")
    outside = {p for p in _snapshot(tmp_path) if not p.startswith("a/sample") and p not in ("a", "cwd")}
    assert not outside and not any(cwd.iterdir())
    # every href of the catalog points inside it
    import pystac

    for item in pystac.Catalog.from_file(out / "catalog.json").get_items(recursive=True):
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).resolve().is_relative_to(out.resolve())


@pytest.mark.parametrize("suffix", [".zarr", ".nc", ".tif"])
def test_security__write_stays_beside_the_target_even_with_dotdot_and_on_failure(tmp_path, monkeypatch, suffix):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    chosen = tmp_path / "chosen"
    (chosen / "sub").mkdir(parents=True)
    snow = make_series(np.random.default_rng(0).random((3, 8, 8)), chunks={"time": 1})
    target = chosen / "sub" / ".." / f"out{suffix}"
    gx.io.write(snow, target)
    assert _snapshot(chosen) == {"sub", f"out{suffix}"} | (
        {f"out{suffix}/{p}" for p in _snapshot(chosen / f"out{suffix}")} if suffix == ".zarr" else set()
    )

    def explode(block):
        raise RuntimeError("disk full")

    broken = snow.copy(data=snow.data.map_blocks(explode, dtype=snow.dtype))
    before = _snapshot(tmp_path)
    with pytest.raises(RuntimeError):
        gx.io.write(broken, chosen / f"again{suffix}")
    assert _snapshot(tmp_path) == before  # the temporary sibling is gone too
    assert not any(cwd.iterdir())


def test_security__write_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.zarr"
    gx.io.write(make_scene_cube(times=1, height=4, width=4), precious)
    before = {p: p.read_bytes() for p in precious.rglob("*") if p.is_file()}
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    link = chosen / "cube.zarr"
    link.symlink_to(precious, target_is_directory=True)
    with pytest.raises(gx.io.OutputExistsError):
        gx.io.write(make_scene_cube(times=2, height=4, width=4), link)
    gx.io.write(make_scene_cube(times=2, height=4, width=4), link, overwrite=True)
    assert {p: p.read_bytes() for p in precious.rglob("*") if p.is_file()} == before
    assert not link.is_symlink() and gx.io.read(link).sizes["time"] == 2


@pytest.mark.slow
def test_security__cli_run_writes_only_inside_the_chosen_paths(tmp_path, monkeypatch):
    from glacierxr.cli import main

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    work = tmp_path / "work"
    config = tmp_path / "run.toml"
    config.write_text(
        "[preprocess]\nmonths = 1\nalign = false\n"
        "[patches]\npatch = 8\nstride = 8\ninput_steps = 2\ntarget_steps = 2\n"
        "val_fraction = 0.2\ntest_fraction = 0.2\n"
        "[model]\nname = \"convlstm\"\nhidden_channels = [2]\noutput_steps = 2\n"
        "[train]\nmax_epochs = 1\nbatch_size = 8\npatience = 1\n"
        "[predict]\nsteps = 2\n"
    )
    before = _snapshot(tmp_path)
    assert main(["sample", "--out", str(work / "sample"), "--width", "32", "--height", "32",
                 "--start", "2019-01-01", "--end", "2020-12-31"]) == 0
    assert main(["prepare", "--config", str(config), "--catalog", str(work / "sample" / "catalog.json"),
                 "--datetime", "2019-01-01/2020-12-31", "--out", str(work / "composites.zarr")]) == 0
    assert main(["train", "--config", str(config), "--data", str(work / "composites.zarr"),
                 "--out", str(work / "run")]) == 0
    assert main(["predict", "--config", str(config), "--data", str(work / "composites.zarr"),
                 "--checkpoint", str(work / "run" / "model.pt"), "--out", str(work / "forecast.zarr")]) == 0
    after = _snapshot(tmp_path)
    new = after - before
    assert all(p == "work" or p.startswith("work/") for p in new), sorted(p for p in new if not p.startswith("work"))
    assert not any(cwd.iterdir()), sorted(os.listdir(cwd))
    assert not [p for p in new if ".partial-" in p or p.endswith(".tmp")]  # no temporary left


@pytest.mark.parametrize("catalog", [
    f"http://127.0.0.1:9/catalog.json?token={SECRET}&sr=b",
    f"http://127.0.0.1:9/api?{TOKEN}",
    f"http://user:pw@127.0.0.1:9/catalog.json?X-Amz-Signature={SECRET}",
])
def test_security__cli_error_lines_carry_no_token(catalog, capsys):
    """A token in a URL the user typed never reaches the one-line CLI error (loopback only)."""
    from glacierxr.cli import main

    code = main(["search", "--catalog", catalog, "--datetime", "2020"])
    captured = capsys.readouterr()
    assert code != 0 and SECRET not in captured.err + captured.out
    assert len([line for line in captured.err.splitlines() if line.strip()]) == 1, captured.err


def test_security__locks_and_partials_stay_beside_the_output(tmp_path, monkeypatch):
    """The lock file and the partial of a write are siblings of the output, never in the cwd."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    seen = []
    real = gx._safety.partial_path

    def spy(path):
        seen.append(real(path))
        return seen[-1]

    monkeypatch.setattr(gx._safety, "partial_path", spy)
    out = tmp_path / "chosen" / "out.zarr"
    out.parent.mkdir()
    with gx._safety.output_lock(out):
        assert gx._safety.lock_path(out).parent == out.parent and gx._safety.lock_path(out).exists()
        gx.io.write(make_series(np.zeros((2, 4, 4))), out)
    assert [p.parent for p in seen] == [out.parent] and not any(cwd.iterdir())
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.zarr"]
