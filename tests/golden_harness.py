"""Running golden-value cases in a fresh process with processor-independent arithmetic.

A golden test module defines CASES and run_case(tmp, *case) and ends with
``golden_harness.main(__file__, CASES, run_case, GOLDEN)``: run as a script with --case it
prints one case's numbers; with --write it writes every case to the golden file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPRODUCIBLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_reproducibly(script: str, case: str, tmp: Path) -> dict:
    """One case of a golden module, in a fresh process with processor-independent arithmetic."""
    result = subprocess.run([sys.executable, script, "--case", case, str(tmp)],
                            env={**os.environ, **REPRODUCIBLE}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def main(script: str, cases: dict, run_case: Callable[..., dict], golden: Path) -> None:
    """A golden module run as a script: one case (--case NAME TMP) or write them all (--write)."""
    if "--case" in sys.argv:
        import torch

        torch.set_num_threads(1)
        torch.backends.mkldnn.enabled = False
        case, tmp = sys.argv[sys.argv.index("--case") + 1:][:2]
        print(json.dumps(run_case(Path(tmp), *cases[case])))
    elif "--write" in sys.argv:
        out = {}
        for case in sorted(cases):
            with tempfile.TemporaryDirectory() as tmp:
                out[case] = run_reproducibly(script, case, Path(tmp))
                print(case, out[case])
        golden.write_text(json.dumps(out, indent=1) + "\n")
