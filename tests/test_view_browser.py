"""`satlab view` in a real browser (headless Chromium driven by Selenium): a live run's page
grows its loss curve as steps complete, its Stop button stops the run as Ctrl-C would, a
finished run's page shows its results, a D2NN run's page shows the camera frame.

Screenshots go to the folder in SATLAB_SCREENSHOTS (default: the test's tmp_path).
Chromium and its driver are system packages (apt-get install chromium chromium-driver;
.ci/run installs them): without them these tests fail, they are not skipped.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from conftest import SATLAB, TWO_LAYER_RIG, tiny_config, train_process, write_yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from satlab import checkpoint

WIDTH = 1300


@pytest.fixture
def browser():
    """Headless Chromium, from the system's packages (never a downloaded build)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("Chromium is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WIDTH},1200"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("SATLAB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def viewer(runs: Path):
    """`satlab view RUNS --port 0` running; yields its address. Ctrl-C ends it, with code 0."""
    proc = subprocess.Popen([SATLAB, "view", str(runs), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert found, line + proc.stderr.read()
        yield found[1]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def screenshot(driver, path: Path) -> Path:
    """The whole page, however long."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(max(height + 120, 800), 8000))
    time.sleep(0.5)  # Plotly redraws at the new size
    assert driver.save_screenshot(str(path)), path
    return path


def points(driver, plot: str = "loss-plot") -> int:
    """How many points the first line of a Plotly graph holds (read from the graph itself)."""
    return driver.execute_script(
        "const g = document.getElementById(arguments[0]);"
        "return g && g.data && g.data.length ? g.data[0].x.length : 0;", plot)


def page_errors(driver) -> list[str]:
    """The browser console's errors: a script error, a refused resource, a CSP violation."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver, seconds: float, condition, message: str):
    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition, message)


def wait_for_run(run: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``satlab train`` has written the run folder (after its rig opened)."""
    deadline = time.monotonic() + seconds
    while not (run / "config.yaml").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run folder never appeared"
        time.sleep(0.1)


def press_stop(driver) -> None:
    """Press Stop and accept the confirmation dialog."""
    button = wait(driver, 60, expected_conditions.element_to_be_clickable((By.ID, "stop")),
                  "the Stop button never showed")
    button.click()
    dialog = wait(driver, 10, expected_conditions.alert_is_present(), "no confirmation dialog")
    assert "Stop run" in dialog.text and "at the next evaluation point" in dialog.text
    dialog.accept()
    acknowledged = ("stop requested: the run stops at its next step (or, while it evaluates, at "
                    "the next evaluation point)")
    # (once the run has stopped, the page says so instead)
    wait(driver, 10, lambda d: d.find_element(By.ID, "stop-result").text == acknowledged
         or d.find_element(By.ID, "stop-result").text.startswith("stopped on request"),
         "the stop request was not acknowledged")


def test_a_live_run_grows_on_the_page_and_stops_from_it(tmp_path, browser, screenshots):
    epochs, batch, per_class = 6, 8, 40  # 300 steps of SPSA
    rig = yaml.safe_load(TWO_LAYER_RIG.read_text())
    traces = {}  # each heater source's writes: output state and largest current, one line each
    for heaters in ("heaters_fc2", "heaters_fc3"):
        traces[heaters] = tmp_path / f"{heaters}.trace"
        rig["instruments"][heaters]["options"] = {"trace_file": str(traces[heaters])}
        # 5 ms after each of a step's 36 writes: the run takes about a minute, however fast
        # the machine (without it, 2 s: over before the page could watch it grow)
        rig["instruments"][heaters]["settle_time"] = 0.005
    cfg = tiny_config(write_yaml(tmp_path / "rig.yaml", rig), methods=["sat"], epochs=epochs,
                      batch_size=batch, checkpoint_every=5, log_every=1)
    cfg["data"]["train_per_class"] = per_class
    steps = epochs * math.ceil(10 * per_class / batch)
    runs = tmp_path / "runs"
    run = runs / "mrr-live"
    proc = train_process(write_yaml(tmp_path / "live.yaml", cfg), "--run-dir", run)
    try:
        wait_for_run(run, proc)
        with viewer(runs) as url:
            browser.get(url + "run/mrr-live")
            first = wait(browser, 120, lambda d: points(d) or False, "the loss curve never got a point")
            wait(browser, 120, lambda d: points(d) > first, "the loss curve did not grow")
            assert proc.poll() is None, "the run ended before the page saw it grow"
            wait(browser, 30, lambda d: d.find_element(By.ID, "state").text == "running",
                 "the page does not say running")
            heatmaps = browser.find_elements(By.CSS_SELECTOR, "#controls .plot")
            assert len(heatmaps) == 2  # one per physical layer: fc2, fc3
            identities = browser.find_elements(By.CSS_SELECTOR, "#instruments tbody tr")
            assert len(identities) == 6
            screenshot(browser, screenshots / "live-mrr.png")
            press_stop(browser)
            assert proc.wait(timeout=120) == 130  # as Ctrl-C
            for heaters, trace in traces.items():  # the rig made safe: ramped down, switched off
                output, max_current, _ = trace.read_text().splitlines()[-1].split()
                assert output == "0" and float(max_current) == 0.0, (heaters, output, max_current)
            wait(browser, 30, lambda d: d.find_element(By.ID, "state").text == "interrupted",
                 "the page does not say interrupted")
            assert not browser.find_element(By.ID, "stop").is_displayed()
            screenshot(browser, screenshots / "stopped-mrr.png")
            assert page_errors(browser) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state, used = checkpoint.load_latest(run / "sat" / "checkpoint.pt")
    assert used == run / "sat" / "checkpoint.pt" and not state["done"]
    assert 0 < state["epoch"] * (steps // epochs) + state["step"] < steps  # stopped mid-run
    resumed = subprocess.run([SATLAB, "train", "--resume", str(run), "--quiet"],
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load_latest(run / "sat" / "checkpoint.pt")[0]["done"]


def test_a_finished_runs_page_shows_its_results(tmp_path, browser, screenshots):
    runs = tmp_path / "runs"
    run = runs / "mrr-finished"
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(TWO_LAYER_RIG))
    for command in (["train", str(config), "--run-dir", str(run), "--quiet"],
                    ["evaluate", str(run), "--sweep", "drift_K=0,1", "--quiet"]):
        done = subprocess.run([SATLAB, *command], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    with viewer(runs) as url:
        browser.get(url)
        link = wait(browser, 30, lambda d: d.find_elements(By.LINK_TEXT, "mrr-finished"),
                    "the index does not list the run")
        row = browser.find_element(By.CSS_SELECTOR, "#runs tbody tr").text
        assert "finished" in row and "sat" in row and "%" in row
        screenshot(browser, screenshots / "index.png")
        link[0].click()
        wait(browser, 30, lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#images img')];"
            "return imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0);"),
            "report.png and the sweep plot did not load")
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#images figcaption")]
        assert names == ["report.png", "sweep-drift_K.png"]
        summaries = browser.find_elements(By.CSS_SELECTOR, "#summaries tbody tr")
        assert [r.text.split()[0] for r in summaries] == ["sat", "plain"]
        assert browser.find_element(By.ID, "state").text == "finished"
        assert not browser.find_element(By.ID, "stop").is_displayed()
        rows = len((run / "sat" / "metrics.csv").read_text().splitlines()) - 1
        assert points(browser) == rows
        screenshot(browser, screenshots / "finished-mrr.png")
        assert page_errors(browser) == []


def test_a_live_d2nn_runs_page_shows_the_camera_frame(tmp_path, browser, screenshots):
    runs = tmp_path / "runs"
    run = runs / "d2nn-live"
    config = write_yaml(tmp_path / "d2nn.yaml", {
        "name": "d2nn-live", "rig": str(files("satlab.configs") / "d2nn-sim.yaml"),
        "data": {"train_per_class": 20, "test_per_class": 1},
        "model": {"front": "image", "physical": [4096, 10], "readout_scale": 10},
        "estimator": {"name": "physics_aware"},
        "training": {"methods": ["sat"], "epochs": 3, "batch_size": 10, "lr_controls": 0.1,
                     "rho": 0.5, "adaptive": False, "log_every": 1, "checkpoint_every": 5}})
    proc = train_process(config, "--run-dir", run)
    try:
        wait_for_run(run, proc)
        with viewer(runs) as url:
            browser.get(url + "run/d2nn-live")
            wait(browser, 120, lambda d: d.execute_script(
                "const i = document.getElementById('frame');"
                "return !document.getElementById('camera').hidden && i.complete && i.naturalWidth > 0;"),
                "the camera frame never showed")
            regions = browser.find_elements(By.CSS_SELECTOR, "#regions rect")
            assert len(regions) == 10  # one detector region per class
            wait(browser, 120, lambda d: points(d) > 0, "the loss curve never got a point")
            screenshot(browser, screenshots / "live-d2nn.png")
            press_stop(browser)
            assert proc.wait(timeout=120) == 130
            assert page_errors(browser) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
