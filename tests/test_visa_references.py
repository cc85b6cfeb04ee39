"""The shipped pyvisa-sim simulations answer every query in the form the instruments' makers
document (tests/references/visa.yaml), terminators included, and the reply parsing the
VISA drivers rely on (pymeasure's) reads every documented example as the number it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pyvisa
import yaml
from pymeasure.adapters import ProtocolAdapter
from pymeasure.instruments import Instrument

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = yaml.safe_load((Path(__file__).parent / "references" / "visa.yaml").read_text())
QUERIES = [(name, query, spec) for name, inst in REFERENCE["instruments"].items()
           for query, spec in inst["queries"].items()]


@pytest.mark.parametrize(("name", "query", "spec"), QUERIES, ids=[f"{n}:{q}" for n, q, _ in QUERIES])
def test_the_simulation_answers_in_the_documented_form(name, query, spec):
    inst = REFERENCE["instruments"][name]
    manager = pyvisa.ResourceManager(f"{ROOT / inst['yaml']}@sim")
    with manager.open_resource(inst["resource"], read_termination="\n", write_termination="\n",
                               timeout=2000) as resource:
        reply = resource.query(query) + "\n"
    assert reply.endswith(inst["terminator"]), (query, reply)
    assert re.match(spec["form"], reply[: -len(inst["terminator"])]), (query, reply)


@pytest.mark.parametrize(("name", "query", "spec"), QUERIES, ids=[f"{n}:{q}" for n, q, _ in QUERIES])
def test_every_documented_example_has_its_form_and_numbers_read_as_written(name, query, spec):
    terminator = REFERENCE["instruments"][name]["terminator"]
    for example in spec["examples"]:
        assert re.match(spec["form"], example), example
        try:
            number = float(example)
        except ValueError:
            continue  # not a number: an identification, an error queue entry, a mode
        # the drivers read "\n"-terminated lines: a CR LF instrument leaves its CR in
        adapter = ProtocolAdapter([(query, example + terminator[:-1])])
        assert Instrument(adapter, "reference", includeSCPI=False).values(query) == [number]
