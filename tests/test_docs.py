"""The docs site builds in strict mode, offline, with a page for every public op.

One ``mkdocs build --strict`` into a temporary folder (about 6 s of CPU, once per test run
however many xdist workers there are), from a results folder made here (a REPORT.md with a
figure, a bench.md), then the built HTML is read back.
"""

import fcntl
import html
import importlib.util
import inspect
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import fbp
from experiments import EXPERIMENTS

ROOT = Path(__file__).resolve().parent.parent
REPORT = """# fbp experiments — report

## demo: does the report reach the site?

| case | value |
|---|---|
| the answer | 42 |

![](demo.png)

The raw numbers are in [the JSON](demo.json), which the site does not hold.
"""
BENCH = "| net | fbp / jax.grad |\n|---|---|\n| 2-4-1 | 0.987654 |\n"


def _png(width=2, height=2) -> bytes:
    """A valid grey PNG, written by hand (no image library needed)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                                0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _build(base: Path) -> tuple[Path, subprocess.CompletedProcess, Path]:
    results = base / "results"
    results.mkdir()
    (results / "REPORT.md").write_text(REPORT)
    (results / "demo.png").write_bytes(_png())
    (results / "bench.md").write_text(BENCH)
    env = {**os.environ, "FBP_RESULTS": str(results), "NO_MKDOCS_2_WARNING": "1",
           "DISABLE_MKDOCS_2_WARNING": "true"}
    out = base / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                          str(ROOT / "mkdocs.yml"), "-d", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return out, run, results


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One build per test run: pytest-xdist's workers share it (under a lock) instead of
    each building the site again."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:
        return _build(tmp_path_factory.mktemp("docs"))
    shared = tmp_path_factory.getbasetemp().parent / f"docs-{run_id}"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / "done.json"
        if not done.exists():
            out, run, results = _build(shared)
            done.write_text(json.dumps([run.returncode, run.stdout, run.stderr]))
        code, stdout, stderr = json.loads(done.read_text())
    run = subprocess.CompletedProcess([], code, stdout, stderr)
    return shared / "site", run, shared / "results"


def _text(page: Path) -> str:
    """The page's text: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def _public_ops():
    """Every function in fbp.__all__ that lives in fbp.ops or fbp.nets, by its module."""
    ops = []
    for name in fbp.__all__:
        obj = getattr(fbp, name)
        module = getattr(obj, "__module__", "")
        if inspect.isfunction(obj) and module.startswith(("fbp.ops.", "fbp.nets.")):
            ops.append((name, module))
    return ops


def test_the_site_builds_in_strict_mode_without_a_warning(site):
    out, run, _ = site
    assert run.returncode == 0, run.stdout + run.stderr
    assert "WARNING" not in run.stderr and "WARNING" not in run.stdout, run.stderr
    assert (out / "index.html").exists()


def test_every_public_op_has_its_docstring_on_the_page_of_its_family(site):
    out, _, _ = site
    ops = _public_ops()
    assert len(ops) >= 20, ops                 # the test is about something
    for name, module in ops:
        _, folder, family = module.split(".")
        page = out / folder / f"{family}.html"
        assert page.exists(), f"{module} has no page {page.name}"
        source = page.read_text()
        assert f'id="{module}.{name}"' in source, f"{name} has no section on {page.name}"
        # the derivation is shown line for line, as help(fbp.NAME) prints it
        doc = inspect.getdoc(getattr(fbp, name)).replace("``", "")
        summary, _, body = doc.partition("\n\n")
        shown = _text(page)
        has_summary = " ".join(summary.split()) in " ".join(shown.split())
        has_body = body.strip("\n") in shown
        assert has_summary, f"{name}'s summary is not on {page.name}"
        assert has_body, f"{name}'s docstring is not on {page.name} line for line"


def test_every_op_section_shows_its_rule_and_its_proof(site):
    out, _, _ = site
    text = _text(out / "ops" / "activations.html")
    assert "def _sigmoid_bwd(h, g):" in text
    assert "_sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)" in text
    assert "fbp.forward.sigmoid" in text                       # the forward-mode twin
    assert "tests/test_rules.py" in text and "tests/test_ops_activations.py" in text
    assert "make check" in text


def test_no_font_script_or_style_comes_from_outside_the_site(site):
    out, _, _ = site
    external = re.compile(r"""<(?:script|link|img|iframe|source|embed|video|audio)\b[^>]*?"""
                          r"""\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)
    pages = list(out.rglob("*.html"))
    styles = list(out.rglob("*.css"))
    assert len(pages) >= 10 and styles
    for page in pages:
        source = page.read_text()
        found = external.search(source)
        assert found is None, f"{page.name} loads {found and found.group(0)}"
        assert "fonts.googleapis" not in source and "fonts.gstatic" not in source
    for style in styles:
        css = style.read_text()
        assert not re.search(r"""url\(\s*["']?(?:https?:)?//|@import""", css), style


def test_the_chinese_page_is_the_chinese_readme(site):
    out, _, _ = site
    zh = ROOT / "README.zh-CN.md"
    assert "README.zh-CN.md" in "\n".join(ROOT.joinpath("README.md").read_text().splitlines()[:5])
    page = out / "zh.html"
    text = _text(page)
    title = zh.read_text().splitlines()[0].lstrip("# ")
    assert title in text
    rows = [line.split("|")[1].strip().replace("`", "") for line in zh.read_text().splitlines()
            if line.startswith("| §")]
    assert len(rows) >= 12 and all(row in text for row in rows)
    assert 'href="zh.html"' in (out / "index.html").read_text()      # the README links it


def test_the_experiments_page_is_the_report_with_its_figures(site):
    out, _, results = site
    text = _text(out / "experiments" / "index.html")
    assert "does the report reach the site?" in text and "42" in text
    assert re.search(r'<img[^>]*src="demo.png"', (out / "experiments" / "index.html").read_text())
    assert (out / "experiments" / "demo.png").read_bytes() == (results / "demo.png").read_bytes()
    assert "the JSON (demo.json)" in text                  # a link the site cannot follow
    assert "0.987654" in _text(out / "bench.html")


def test_without_results_the_pages_say_how_to_make_them(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_pages", ROOT / "docs" / "gen_pages.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    pages = gen.pages(results=tmp_path / "nothing-here")
    experiments = pages["experiments/index.md"]
    assert "make experiments" in experiments
    assert all(f"`{name}`" in experiments for name in EXPERIMENTS)
    assert "make bench" in pages["bench.md"]
