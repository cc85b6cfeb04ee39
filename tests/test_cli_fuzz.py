"""The CLI's contract under generated bad input (hypothesis): mutated configs, rig files
and run directories (truncation, type swaps, deleted keys, NaN/inf, path tricks).

Whatever the input: the exit code is 0, 1, 2, 130 or 143; no exception escapes (no
traceback without --debug); a failure's message is a line starting "error:"; nothing
is written outside the run directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import TWO_LAYER_RIG, bank_rig, tiny_config, write_yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from satlab.cli import main

EXIT_CODES = {0, 1, 2, 130, 143}
ODD_VALUES = [None, "", "x", "nan", -1, 0, 1, 2.5, 1e300, -1e-12, math.nan, math.inf, -math.inf,
              [], {}, [1, "a"], True, "../../outside", "/", "1e-2", 10**30]
FUZZ = settings(max_examples=int(os.environ.get("SATLAB_FUZZ_EXAMPLES", "25")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def paths_in(doc, prefix=()) -> list[tuple]:
    """Every key path of a nested mapping/list document."""
    found = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, value in items:
        found.append((*prefix, key))
        found += paths_in(value, (*prefix, key))
    return found


@st.composite
def mutated(draw, base: dict) -> dict:
    """``base`` with one to three keys deleted or replaced by odd values."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_in(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(st.sampled_from(ODD_VALUES))
    return doc


def run_cli(*args) -> tuple[int, str, str]:
    """The command in this process; an exception escaping main() fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def check_contract(code: int, out: str, err: str) -> None:
    event(f"exit {code}")  # pytest --hypothesis-show-statistics shows the spread
    assert code in EXIT_CODES, (code, err)
    assert "Traceback" not in err
    if code != 0:
        assert any(line.startswith("error: ") for line in err.splitlines()), err


@FUZZ
@given(doc=mutated(bank_rig(rows=2, cols=3)))
def test_mutated_rig_files(doc):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trace = tmp / "heaters.trace"
        heaters = doc.get("instruments", {}).get("heaters") if isinstance(doc.get("instruments"),
                                                                          dict) else None
        if isinstance(heaters, dict) and isinstance(heaters.get("options", {}), dict):
            heaters.setdefault("options", {})["trace_file"] = str(trace)
        rig = tmp / "rig.yaml"
        rig.write_text(yaml.safe_dump(doc))
        code, out, err = run_cli("rig", "check", rig)
        check_contract(code, out, err)
        if trace.exists() and trace.read_text():
            # whatever happened, the heaters ended switched off at zero current
            assert trace.read_text().splitlines()[-1].split()[:2] == ["0", "0"]
        assert files_under(tmp) <= {rig, trace}


def base_config() -> dict:
    cfg = tiny_config(TWO_LAYER_RIG, methods=["sat"])
    cfg["evaluation"] = {"drift": "0:1:2", "batch_size": 50}
    return cfg


@FUZZ
@given(doc=mutated(base_config()))
def test_mutated_configs(doc):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if isinstance(doc, dict):  # runs go under tmp/runs (name path tricks are fuzzed)
            doc["runs_dir"] = str(tmp / "runs")
        cfg = tmp / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        code, out, err = run_cli("train", cfg, "--quiet")
        check_contract(code, out, err)
        new = files_under(tmp) - {cfg}
        if code == 2:
            assert not new  # bad input: nothing written
        assert all(tmp / "runs" in p.parents for p in new), new


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fuzz-run")
    cfg = write_yaml(tmp / "cfg.yaml", base_config())
    code, _, err = run_cli("train", cfg, "--run-dir", tmp / "run", "--quiet")
    assert code == 0, err
    return tmp / "run"


def damaged(data: bytes, how: str, cut: float) -> bytes:
    if how == "truncate":
        return data[: int(len(data) * cut)]
    if how == "empty":
        return b""
    if how == "garbage":
        return bytes((b * 31 + 7) % 256 for b in data[:200])
    if how == "json list":
        return b"[1, 2, 3]"
    if how == "json without keys":
        return b'{"method": "sat"}'
    return b'{"drift_sweep": [{"drift_K": NaN, "accuracy": Infinity}]}'


RUN_FILES = ["sat/checkpoint.pt", "sat/checkpoint.prev.pt", "sat/summary.json", "sat/metrics.csv",
             "config.yaml", "rig.yaml"]


@FUZZ
@given(target=st.sampled_from(RUN_FILES),
       how=st.sampled_from(["truncate", "empty", "garbage", "json list", "json without keys",
                            "json nan", "delete"]),
       cut=st.floats(0.0, 0.99),
       command=st.sampled_from(["report", "evaluate", "resume"]))
def test_damaged_run_directories(finished_run, target, how, cut, command):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        shutil.copytree(finished_run, run)
        path = run / target
        if path.exists():
            if how == "delete":
                path.unlink()
            else:
                path.write_bytes(damaged(path.read_bytes(), how, cut))
        before = files_under(tmp)
        args = {"report": ["report", run, "-o", tmp / "out.png"],
                "evaluate": ["evaluate", run, "--drift", "0:1:2", "--quiet"],
                "resume": ["train", "--resume", run, "--quiet"]}[command]
        code, out, err = run_cli(*args)
        check_contract(code, out, err)
        new = files_under(tmp) - before
        assert all(run in p.parents or p == tmp / "out.png" for p in new), new
