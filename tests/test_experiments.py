"""Every experiment's --quick mode runs, writes its JSON and PNG, and reports its question."""

import importlib
import json

import pytest

from experiments import EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_quick_mode_writes_results(name, tmp_path):
    module = importlib.import_module(f"experiments.{name}")
    assert module.__doc__.strip().splitlines()[0].endswith("?"), "first line states the question"
    result = module.run(quick=True, out=tmp_path)
    assert json.loads((tmp_path / f"{name}.json").read_text()) == result
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    section = module.report(result)
    assert f"{name}.png" in section
