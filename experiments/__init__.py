"""fbp's experiments: one question each, run by ``make experiments`` (``python -m experiments``).

Each module ``experiments/NAME.py`` starts with a docstring whose first line is its question
and defines

* ``run(quick: bool = False, out: pathlib.Path = RESULTS) -> dict`` — does the work, prints
  a short table, writes ``out/NAME.json`` and ``out/NAME.png`` (via ``experiments._common``),
  returns the JSON-able result;
* ``report(result: dict) -> str`` — the markdown section for ``results/REPORT.md``: the question,
  a table, the figure ``![](NAME.png)`` and two or three sentences of what it shows.

``quick=True`` is the small version the test suite runs so that experiments cannot rot.
"""

# The order in which `make experiments` runs them and REPORT.md lists them.  Add a module's
# name here when the module exists (tests/test_experiments.py runs each one's quick mode).
EXPERIMENTS = [
    "xor",
    "activations",
    "stability",
    "gradcheck",
    "cost",
    "vanishing",
    "accumulation",
    "graph",
    "modes",
    "distributed",
    "curvature",
    "pieces",
    "digits",
    "bptt",
    "memory",
    "transformer",
]
