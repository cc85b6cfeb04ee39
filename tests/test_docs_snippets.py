"""Every rig snippet in docs/instruments.md runs as written: `satlab rig check` opens it
(against the shipped simulations, emulators and recordings), reads every instrument and
leaves the rig safe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from satlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = [block for block in re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "instruments.md")
                                          .read_text(), re.DOTALL) if "instruments:" in block]


def test_the_page_has_its_snippets():
    assert len(SNIPPETS) >= 7  # 2400, 2600, PM100, 816x, Q8iv, SLM, camera


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[re.search(r"driver: (\S+)", s)[1] for s in SNIPPETS])
def test_a_snippet_runs_as_written(snippet, tmp_path, monkeypatch, capsys, xvfb):
    if xvfb is None:  # the SLM snippet opens a window: a failure, not a skip
        pytest.fail("Xvfb is not installed (apt-get install xvfb libgl1-mesa-dri libglx-mesa0 libgl1)")
    rig = tmp_path / "snippet.yaml"
    rig.write_text(snippet)
    monkeypatch.chdir(ROOT)  # paths in snippets are the repository's, as a reader's checkout
    code = main(["rig", "check", str(rig)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "snippet: " in out and "all left in their safe state" in out  # named after its file
