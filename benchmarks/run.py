"""Run every benchmark in ``benchmarks/`` and write ``benchmarks/RESULTS.md``.

Each ``benchmarks/*.py`` script (except this one and private ``_*.py`` files) is run in its own
process with the same Python (``--quick`` is passed on when given). A script prints one JSON
object per line with the keys ``benchmark``, ``metric``, ``value``, ``unit`` and, where it
measured a comparison in the same run, ``baseline``, ``baseline_value`` and ``ratio``; other
output lines are ignored. ``RESULTS.md`` gets one table per benchmark under a description of
the machine. A script that fails (non-zero exit, time-out, or no result line) is reported as
failed with the tail of its stderr, and this runner then exits with status 1.

    python benchmarks/run.py --quick            # every script, small inputs
    python benchmarks/run.py --only load        # one script, full size -> RESULTS-load.md

A run of some scripts (``--only``) writes ``RESULTS-<names>.md`` beside it unless ``--output``
says otherwise, so the whole ``RESULTS.md`` is never replaced by a part of it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGES = (
    "numpy", "xarray", "dask", "distributed", "stackstac", "rasterio", "rioxarray", "pystac",
    "zarr", "scipy", "opencv-python-headless", "torch", "xbatcher",
)  # fmt: skip


@dataclass
class Outcome:
    script: str
    returncode: int | None
    seconds: float
    records: list[dict] = field(default_factory=list)
    stderr: str = ""
    problem: str | None = None

    @property
    def failed(self) -> bool:
        return self.problem is not None


def scripts(only: list[str] | None) -> list[Path]:
    found = sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )
    if only:
        wanted = {name.removesuffix(".py") for name in only}
        missing = wanted - {p.stem for p in found}
        if missing:
            raise SystemExit(f"no benchmark script named {sorted(missing)} in {HERE}")
        found = [p for p in found if p.stem in wanted]
    return found


def parse(stdout: str) -> tuple[list[dict], list[str]]:
    records, bad = [], []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(line)
            continue
        if not {"benchmark", "metric", "value", "unit"} <= set(record):
            bad.append(line)
            continue
        records.append(record)
    return records, bad


def run_script(path: Path, *, quick: bool, timeout: float) -> Outcome:
    """Run one script in its own process group; on time-out the whole group is ended
    (a benchmark may start Dask workers or servers of its own)."""
    command = [sys.executable, str(path)] + (["--quick"] if quick else [])
    start = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end_group(process)
        stdout, stderr = process.communicate()
        records, _ = parse(stdout)
        return Outcome(path.name, None, time.perf_counter() - start, records, stderr,
                       f"timed out after {timeout:.0f} s")  # fmt: skip
    finally:
        if process.poll() is None:  # interrupted (Ctrl-C): leave nothing running
            _end_group(process)
    seconds = time.perf_counter() - start
    records, bad = parse(stdout)
    problem = None
    if process.returncode != 0:
        problem = f"exit status {process.returncode}"
    elif not records:
        problem = "printed no result line"
    elif bad:
        problem = f"{len(bad)} malformed result line(s), e.g. {bad[0][:120]!r}"
    return Outcome(path.name, process.returncode, seconds, records, stderr, problem)


def _end_group(process: subprocess.Popen) -> None:
    """SIGTERM the script's process group, then SIGKILL what is left after 10 s."""
    import signal

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ------------------------------------------------------------------------------------------
# machine description
# ------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram() -> str:
    try:
        import psutil

        return f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        return "unknown"


def _gpu() -> str:
    try:
        import torch
    except ImportError:
        return "none (torch not installed)"
    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return "none seen by torch.cuda"


def _git() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return commit + (" (working tree has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> str:
    parts = []
    for name in PACKAGES:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    try:
        import rasterio

        parts.append(f"GDAL {rasterio.__gdal_version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def machine() -> list[tuple[str, str]]:
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    cores = f"{os.cpu_count()} logical" + (f", {physical} physical" if physical else "")
    try:
        cores += f"; this process may use {len(os.sched_getaffinity(0))}"
    except AttributeError:
        pass
    try:
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "unknown"
    return [
        ("CPU", _cpu_model()),
        ("Cores", cores),
        ("Load average (1, 5, 15 min) at start", load),
        ("RAM", _ram()),
        ("GPU", _gpu()),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("Packages", _versions()),
        ("Date", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("Git commit", _git()),
    ]


# ------------------------------------------------------------------------------------------
# RESULTS.md
# ------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}".replace(",", " ")
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


_CORE = ("benchmark", "metric", "value", "unit", "baseline", "baseline_value", "ratio")


def render(outcomes: list[Outcome], *, quick: bool, command: str, environment) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{command}` — do not edit by hand. Mode: "
        + ("**quick** (small inputs; see each script's docstring)." if quick else "**full**."),
        "`ratio` = value / baseline value, both measured in the same run (for times, below 1 "
        "is faster than the baseline; for rates, above 1 is).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in environment]
    failed = [o for o in outcomes if o.failed]
    lines += [
        "",
        f"{len(outcomes)} script(s) run, {len(failed)} failed.",
        "",
    ]
    for outcome in outcomes:
        title = outcome.script.removesuffix(".py")
        lines += [f"## {title}", ""]
        status = "**failed**: " + outcome.problem if outcome.failed else "ok"
        lines += [f"`benchmarks/{outcome.script}` — {status}, {outcome.seconds:.1f} s.", ""]
        if outcome.records:
            lines += [
                "| metric | value | unit | baseline | baseline value | ratio | details |",
                "|---|---:|---|---|---:|---:|---|",
            ]
            for r in outcome.records:
                details = ", ".join(
                    f"{k}={str(v).replace('|', '/')}" for k, v in r.items() if k not in _CORE
                )
                lines.append(
                    "| " + " | ".join(
                        [_fmt(r["metric"]), _fmt(r["value"]), _fmt(r["unit"]), _fmt(r.get("baseline")),
                         _fmt(r.get("baseline_value")), _fmt(r.get("ratio")), details]
                    ) + " |"
                )  # fmt: skip
            lines.append("")
        if outcome.failed:
            tail = "\n".join(outcome.stderr.strip().splitlines()[-30:]) or "(no stderr)"
            lines += ["stderr (last lines):", "", "```", tail, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def output_path(only: list[str] | None) -> Path:
    """``RESULTS.md`` for a run of every script, ``RESULTS-<names>.md`` for a run of some."""
    names = "-".join(sorted(name.removesuffix(".py") for name in only or ()))
    return HERE / (f"RESULTS-{names}.md" if names else "RESULTS.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per script (default 300 quick, 3600 full)")
    parser.add_argument("--output", type=Path, default=None,
                        help="default RESULTS.md; RESULTS-<names>.md with --only (the whole file is kept)")
    args = parser.parse_args(argv)
    args.output = args.output or output_path(args.only)
    timeout = args.timeout or (300.0 if args.quick else 3600.0)

    environment = machine()
    outcomes = []
    for path in scripts(args.only):
        print(f"running {path.name}{' --quick' if args.quick else ''} …", file=sys.stderr, flush=True)
        outcome = run_script(path, quick=args.quick, timeout=timeout)
        outcomes.append(outcome)
        state = f"FAILED ({outcome.problem})" if outcome.failed else "ok"
        print(f"  {state}: {len(outcome.records)} result(s) in {outcome.seconds:.1f} s", file=sys.stderr)
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    text = render(outcomes, quick=args.quick, command=command, environment=environment)
    tmp = args.output.with_name(f".{args.output.name}.partial")
    tmp.write_text(text)
    tmp.replace(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
