"""Every bad value the CLI reads ends in one line naming the file (or flag), the field and
the expectation, exit 2, with nothing written and no current applied (what only an open
instrument can tell is checked right after opening, before any write)."""

from __future__ import annotations

import math

import pytest
from conftest import TWO_LAYER_RIG, bank_rig, tiny_config, write_yaml

from satlab.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def setting(path: str, value):
    """A mutation of a nested mapping: set the value at a dotted path."""
    def apply(data: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value
    return apply


CONFIG_CASES = {
    "drift NaN": (setting("evaluation.drift", "nan,inf"), "evaluation.drift", "must be finite"),
    "drift overflow": (setting("evaluation.drift", "0:1e999:3"), "evaluation.drift", "must be finite"),
    "step 1e300": (setting("estimator.step", 1e300), "estimator.step", "leaves no room"),
    "step beyond the range": (setting("estimator.step", 0.01), "estimator.step", "at most a quarter"),
    "step inf": (setting("estimator.step", math.inf), "estimator.step", "finite"),
    "epochs 1e20": (setting("training.epochs", 1e20), "training.epochs", "integer"),
    "lr inf": (setting("training.lr_controls", math.inf), "training.lr_controls", "finite"),
    "data_dir with offline": (setting("data.data_dir", "mnist"), "data", "source: idx"),
    "limit_train with offline": (setting("data.limit_train", 5), "data", "limit_train"),
    "name with a path": (setting("name", "a/../../x"), "name", "pattern"),
    "misspelt key": (setting("training.epoch", 3), "training.epoch", "did you mean 'epochs'"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_values(case, tmp_path, capsys):
    mutate, field, expected = CONFIG_CASES[case]
    cfg = tiny_config(TWO_LAYER_RIG)
    mutate(cfg)
    path = write_yaml(tmp_path / "cfg.yaml", cfg)
    code, _, err = run_cli(capsys, "train", path, "--run-dir", tmp_path / "run", "--quiet")
    line = one_line_error(err)
    assert code == 2
    assert line.startswith(f"error: {path}: {field}") and expected in line, line
    assert not (tmp_path / "run").exists()


def test_a_key_given_twice_is_named_with_its_line(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(write_yaml(tmp_path / "ok.yaml", tiny_config(TWO_LAYER_RIG)).read_text()
                    + "name: again\n")
    code, _, err = run_cli(capsys, "train", path, "--run-dir", tmp_path / "run")
    assert code == 2 and "key 'name' appears twice (first on line 1)" in one_line_error(err)


def heaters(rig: dict) -> dict:
    return rig["instruments"]["heaters"]


RIG_CASES = {
    "max_step 1e-12": (lambda r: heaters(r)["limits"].update(max_step=1e-12),
                       "instruments.heaters.limits", "more than 10000 writes"),
    "max_current inf": (lambda r: heaters(r)["limits"].update(max_current=math.inf),
                        "instruments.heaters.limits.max_current", "finite"),
    "max_total_power inf": (lambda r: heaters(r)["limits"].update(
        max_total_power=math.inf, heater_resistance_ohm=500), "instruments.heaters.limits.max_total_power",
        "finite"),
    "settle_time 1e9": (lambda r: heaters(r).update(settle_time=1e9),
                        "instruments.heaters.settle_time", "less than or equal to 60"),
    "crosstalk above 1": (lambda r: r["resources"]["chip"]["options"].update(crosstalk=[5.0, -3]),
                          "resources.chip.options.crosstalk", "below 1"),
    "negative detector noise": (lambda r: r["resources"]["chip"]["options"].update(
        detector_noise_W=-1), "resources.chip.options.detector_noise_W", "non-negative"),
    "averages 0": (lambda r: r["instruments"]["pd"].update(options={"averages": 0}),
                   "instruments.pd.options.averages", "positive integer"),
    "averages many": (lambda r: r["instruments"]["pd"].update(options={"averages": "many"}),
                      "instruments.pd.options.averages", "positive integer"),
    "negative fault count": (lambda r: heaters(r).update(options={"fail_after_writes": -1}),
                             "instruments.heaters.options.fail_after_writes", "non-negative"),
    "missing resource": (lambda r: heaters(r).pop("resource"), "instruments.heaters.resource",
                         "needs a resource"),
    "in_features off the modulator": (
        lambda r: r["system"]["layers"][0].update(in_features=5), "system.layers.0.in_features",
        "5, but inputs has 6 channels"),
    "out_features off the detector": (
        lambda r: r["system"]["layers"][0].update(out_features=3), "system.layers.0.out_features",
        "3, but pd has 4 channels"),
    "misspelt limit": (lambda r: heaters(r).update(limits={"max_curent": 0.02}),
                       "instruments.heaters.limits.max_curent", "did you mean 'max_current'"),
}


@pytest.mark.parametrize("case", sorted(RIG_CASES))
def test_bad_rig_values_touch_no_instrument(case, tmp_path, capsys):
    mutate, field, expected = RIG_CASES[case]
    trace = tmp_path / "heaters.trace"
    rig = bank_rig()
    mutate(rig)
    heaters(rig).setdefault("options", {}).setdefault("trace_file", str(trace))
    path = write_yaml(tmp_path / "rig.yaml", rig)
    code, _, err = run_cli(capsys, "rig", "check", path)
    line = one_line_error(err)
    assert code == 2
    assert line.startswith(f"error: {path}: {field}") and expected in line, line
    # never an output on or a current: at most the safe state written again on closing
    lines = trace.read_text().splitlines() if trace.exists() else []
    assert all(line.split()[:2] == ["0", "0"] for line in lines), lines


def test_numbers_without_a_dot_are_numbers(tmp_path, capsys):
    path = tmp_path / "rig.yaml"
    path.write_text(write_yaml(tmp_path / "r.yaml", bank_rig()).read_text().replace(
        "max_current: 0.024", "max_current: 2.4e-2"))
    assert "2.4e-2" in path.read_text()
    code, out, err = run_cli(capsys, "rig", "check", path)
    assert code == 0, err
    assert "left in their safe state" in out


@pytest.mark.parametrize("flags,expected", [
    (["--drift", "nan"], "finite"),
    (["--drift", "1e999"], "finite"),
    (["--drift", "0:1"], "start:stop:count"),
])
def test_bad_evaluate_flags(flags, expected, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_yaml(run / "config.yaml", tiny_config(TWO_LAYER_RIG))
    before = sorted(run.rglob("*"))
    code, _, err = run_cli(capsys, "evaluate", run, *flags)
    assert code == 2 and expected in err and "Traceback" not in err
    assert sorted(run.rglob("*")) == before


def test_epochs_flag_names_the_expectation(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--epochs", "1e9", "--run-dir", tmp_path / "run")
    assert code == 2 and "--epochs: expected a positive integer, got '1e9'" in err


def method_folder(tmp_path, summary: str, metrics: str):
    """A method folder of a run holding just these two files."""
    run = tmp_path / "run" / "sat"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(summary)
    (run / "metrics.csv").write_text(metrics)
    return run


def test_report_refuses_an_output_it_would_not_write(tmp_path, capsys):
    run = method_folder(tmp_path, '{"method": "sat", "estimator": "spsa", "rig_queries": 1, '
                                  '"drift_sweep": [{"drift_K": 0.0, "accuracy": 0.5}]}',
                        "epoch,step,loss,train_acc,rig_queries,rig_seconds,wall_seconds\n")
    code, _, err = run_cli(capsys, "report", run, "-o", tmp_path / "emptydir")
    assert code == 2 and "-o: expected a file ending in .png, .pdf, .svg" in one_line_error(err)
    assert not list(tmp_path.glob("emptydir*"))


@pytest.mark.parametrize("summary,field", [
    ('{"method": "sat", "estimator": "spsa", "rig_q', "(top level): Invalid JSON"),
    ('[1, 2]', "(top level)"),
    ('{"method": "sat", "estimator": "spsa", "rig_queries": 1}', "drift_sweep"),
    ('{"method": "sat", "estimator": "spsa", "rig_queries": 1, "drift_sweep": '
     '[{"drift_K": NaN, "accuracy": 0.5}]}', "drift_sweep.0.drift_K"),
])
def test_report_names_a_damaged_summary(summary, field, tmp_path, capsys):
    run = method_folder(tmp_path, summary, "epoch,step,loss\n")
    code, _, err = run_cli(capsys, "report", run, "-o", tmp_path / "r.png")
    assert code == 2 and one_line_error(err).startswith(f"error: {run / 'summary.json'}: {field}")


def test_report_names_a_damaged_metrics_file(tmp_path, capsys):
    run = method_folder(tmp_path, '{"method": "sat", "estimator": "spsa", "rig_queries": 1, '
                                  '"drift_sweep": []}',
                        "epoch,step,loss,train_acc,rig_queries\n0,0,1.5,0.5,12\n0,1,garb")
    code, _, err = run_cli(capsys, "report", run, "-o", tmp_path / "r.png")
    assert code == 2 and one_line_error(err).startswith(f"error: {run / 'metrics.csv'}: line 3")


@pytest.mark.parametrize("exc,code,message", [
    (KeyboardInterrupt(), 130, "interrupted: any open rig was put in its safe state"),
    (ZeroDivisionError("division by zero"), 1,
     "error: ZeroDivisionError: division by zero (an internal error: --debug shows where)"),
])
@pytest.mark.parametrize("debug", [False, True])
def test_every_end_of_a_command_is_one_line_and_debug_adds_the_traceback(
        exc, code, message, debug, monkeypatch, tmp_path, capsys):
    import satlab.report

    def fail(*args, **kwargs):
        raise exc
    monkeypatch.setattr(satlab.report, "make_report", fail)
    got, _, err = run_cli(capsys, *(["--debug"] if debug else []), "report", tmp_path)
    assert got == code
    assert err.splitlines()[0] == message
    assert ("Traceback (most recent call last)" in err) == debug
