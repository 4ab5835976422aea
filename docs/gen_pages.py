"""Write the pages of the docs site (run by mkdocs-gen-files at every ``mkdocs build``).

Generated, never committed: one page per op family (``fbp/ops/*.py``) and per network
(``fbp/nets/*.py``) — each op's docstring (forward, VJP, shapes, what it saves), the source of
its hand-written rule, its forward-mode twin, and the tests that prove it —, the checker's
guide, the experiments (``results/REPORT.md`` and its figures, or how to produce them), the
benchmarks (``results/bench.md``), an API page for every other module, the home page (the
README), the Chinese page (``README.zh-CN.md``) and the navigation (``SUMMARY.md``).

``FBP_RESULTS=DIR`` reads the experiments' and benchmarks' output from DIR instead of
``results/``.  ``pages(results)`` returns every page as ``{path: text or bytes}``.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sources  # noqa: E402
from sources import FBP, ROOT, Module  # noqa: E402

# Modules whose names appear on the checker's page rather than on an API page of their own.
ON_CHECK_PAGE = {"fbp.numerical", "fbp.testing"}
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def cell(text: str, limit: int = 140) -> str:
    """Text fit for one cell of a Markdown table."""
    text = text.replace("``", "").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def relink(md: str, rename: dict[str, str], present: set[str]) -> str:
    """Point relative links at their page in the site (``rename``); a link to a file the site
    does not hold becomes its text and the path in code, so the strict build never warns."""
    def fix(m):
        bang, text, target = m.groups()
        if re.match(r"^[a-z]+:|^#", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        path = rename.get(path, path)
        if path in present:
            return f"{bang}[{text}]({path}{'#' + anchor if anchor else ''})"
        return f"{text} (`{target}`)" if text else f"(`{target}` is not in this site)"
    return LINK.sub(fix, md)


def shown(path: Path) -> str:
    """A path as the reader types it: relative to the repository when it lies inside."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def section(md: str, heading: str) -> str:
    """The ``## …`` section of a Markdown file whose heading contains ``heading``."""
    m = re.search(rf"^## [^\n]*{re.escape(heading)}[^\n]*\n.*?(?=^## |\Z)", md, re.M | re.S)
    return m.group(0) if m else ""


def op_section(mod: Module, name: str, proofs: sources.Proofs, forward: Module) -> str:
    """One op: its docstring (mkdocstrings), its rule's source, its JVP twin, its proofs."""
    out = [f"::: {mod.name}.{name}", ""]
    rule = mod.rule_source(name)
    if rule:
        out += ['??? example "The hand-written rule: forward, what it saves (`res`), backward"',
                "", "    ```python", *("    " + line for line in rule.splitlines()),
                "    ```", ""]
    if forward.is_function(name) and mod.name.startswith("fbp.ops"):
        jvp = sources.labelled(forward.docstring(name), "JVP")
        out += [f"**Forward mode (JVP):** [`fbp.forward.{name}`][fbp.forward.{name}]"
                + (f" — {cell(jvp, 400)}" if jvp else ""), ""]
    elif rule and ".defvjp(" in rule and not sources.labelled(mod.docstring(name), "JVP"):
        via = (f"`fbp.transposed(fbp.{name})` is one: this rule transposed by JAX "
               "([`fbp.transposed`][fbp.transposed.transposed])"
               if (FBP / "transposed.py").exists() else "forward mode needs a twin")
        out += ["**Forward mode (JVP):** no hand-written twin in `fbp.forward`; `jax.jvp` "
                f"cannot run a `custom_vjp` rule, and {via}.", ""]
    tests = proofs.tests(name)
    table = proofs.in_op_table(name)
    if tests or table:
        out.append("**Proven by:**")
        out.append("")
        if table:
            out.append("- `make check` (`python -m fbp.check`): all seven checks, float64, "
                       "against an independent reference in the op table")
        for path, funcs in tests:
            out.append(f"- `{path}`: " + ", ".join(
                f"`{f}`" if f.startswith("test") else f for f in funcs))
        out.append("")
    return "\n".join(out)


def family_page(mod: Module, public: dict[str, str], proofs, forward: Module) -> str:
    """The page of one op family or network module."""
    ops = [n for n in mod.public() if public.get(n) == mod.name and mod.is_function(n)]
    types = [n for n in mod.public() if public.get(n) == mod.name and n not in ops]
    helpers = [n for n in mod.public() if n not in ops and n not in types]
    out = [f"# {mod.name.split('.')[-1]}", "", f"::: {mod.name}",
           "    options:", "      members: false", "      show_root_heading: false", ""]
    if ops:
        out += ["| op | what it is | tutorial | saves for the backward |", "|---|---|---|---|"]
        for n in ops:
            doc = mod.docstring(n)
            secs = ", ".join(f"§{s}" for s in sources.tutorial_sections(doc))
            first = doc.strip().splitlines()[0] if doc.strip() else ""
            out.append(f"| [`{n}`][{mod.name}.{n}] | {cell(first)} | {secs or '—'} | "
                       f"{cell(sources.labelled(doc, 'Saves')) or '—'} |")
        out.append("")
    for n in ops:
        out.append(op_section(mod, n, proofs, forward))
    if types:
        out += ["## Types: parameters and results", ""] + [f"::: {mod.name}.{n}\n" for n in types]
    if helpers:
        out += ["## Also in this module", "", "Public names of the module that `fbp` itself "
                "does not export (`fbp.__all__`): helpers the rules share, and the like.", ""]
        out += [f"::: {mod.name}.{n}\n" for n in helpers]
    return "\n".join(out)


def check_page(readme: str, present: set[str]) -> str:
    guide = section(readme, "check_vjp")
    guide = relink(guide, {}, present)
    return "\n".join([
        "# The gradient checker", "",
        "How to prove your own `jax.custom_vjp` rule right (or find where it is wrong).", "",
        guide, "## Reference", "",
        "::: fbp.check", "    options:", "      members: false",
        "      show_root_heading: false", "",
        "::: fbp.check.check_vjp", "", "::: fbp.check.VJPReport", "",
        "::: fbp.check.VJPCheckError", "", "::: fbp.testing.assert_vjp_correct", "",
        "### Adding an op family to `make check`", "",
        "::: fbp.check.op_table", "    options:", "      members: false",
        "      show_root_heading: false", "",
        "## Finite differences: `fbp.numerical`", "",
        "::: fbp.numerical", "    options:", "      show_root_heading: false", ""])


def experiment_questions() -> list[tuple[str, str]]:
    tree = ast.parse((ROOT / "experiments" / "__init__.py").read_text())
    names = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", "") == "EXPERIMENTS" for t in n.targets))
    out = []
    for name in names:
        path = ROOT / "experiments" / f"{name}.py"
        doc = ast.get_docstring(ast.parse(path.read_text())) if path.exists() else ""
        out.append((name, (doc or "").strip().splitlines()[0] if doc else ""))
    return out


def experiments_pages(results: Path) -> dict[str, str | bytes]:
    report = results / "REPORT.md"
    if report.exists():
        figures = {f"experiments/{p.name}": p.read_bytes() for p in sorted(results.glob("*.png"))}
        present = {p.split("/", 1)[1] for p in figures}
        md = relink(report.read_text(), {}, present)
        md += (f"\n\n---\n_This page is `{shown(report)}` as `make experiments` left it; "
               "`make docs` copies it here with its figures._\n")
        return {"experiments/index.md": md, **figures}
    rows = "\n".join(f"| `{n}` | {cell(q)} |" for n, q in experiment_questions())
    return {"experiments/index.md": f"""# Experiments

`{shown(report)}` is not here yet, so this page lists the questions only.  Run

```sh
make experiments      # every experiment: results/NAME.json, results/NAME.png, results/REPORT.md
make docs             # this page then holds REPORT.md with every figure
```

(`make NAME` runs one; `python -m experiments NAME --quick --out DIR` the small version the
tests run, and `FBP_RESULTS=DIR make docs` builds the site from DIR.)

| experiment | question |
|---|---|
{rows}
"""}


def bench_page(results: Path, readme: str, present: set[str]) -> str:
    bench = results / "bench.md"
    if bench.exists():
        return ("# Benchmarks\n\n" + relink(bench.read_text(), {}, set())
                + f"\n\n---\n_This page is `{shown(bench)}` as `make bench` left it._\n")
    perf = relink(section(readme, "make bench"), {}, present)
    return ("# Benchmarks\n\n"
            f"`{shown(bench)}` is not here: `make bench` writes it (`python -m benchmarks --quick` "
            "for a short run), and `make docs` then shows it on this page.  Until then, "
            "the figures the README records:\n\n" + perf)


def api_modules() -> list[Module]:
    """Every other public module or package of fbp: forward, train, second_order, autodiff…"""
    found = []
    for path in sorted(FBP.iterdir()):
        if path.name.startswith("_") or path.name in ("ops", "nets", "check"):
            continue
        if path.suffix == ".py" and not sources.is_alias_module(path):
            found.append(Module(path))
        elif path.is_dir() and (path / "__init__.py").exists():
            found.append(Module(path / "__init__.py"))
    return [m for m in found if m.name not in ON_CHECK_PAGE]


def api_page(mod: Module) -> str:
    package = mod.path.name == "__init__.py"
    opts = ["    options:", "      show_root_heading: false"]
    if package:
        opts.append("      show_submodules: true")
    return "\n".join([f"# {mod.name}", "", f"::: {mod.name}", *opts, ""])


def pages(results: Path | None = None) -> dict[str, str | bytes]:
    """Every generated file of the site, ``{path inside the site: content}``."""
    results = Path(results or os.environ.get("FBP_RESULTS") or ROOT / "results")
    readme = (ROOT / "README.md").read_text()
    zh = ROOT / "README.zh-CN.md"
    statics = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*")
               if p.is_file() and p.suffix != ".py"}
    rename = {"README.md": "index.md", "README.zh-CN.md": "zh.md"}
    rename.update({f"docs/{s}": s for s in statics})
    present = statics | {"index.md", "zh.md"}
    public, proofs = sources.public_names(), sources.Proofs()
    forward = Module(FBP / "forward.py")
    out: dict[str, str | bytes] = {"index.md": relink(readme, rename, present)}
    out["zh.md"] = relink(zh.read_text(), rename, present) if zh.exists() else "# 中文\n"
    nav = ["* [Home](index.md)", "* [中文 (Chinese)](zh.md)"]
    for folder, title in (("ops", "Op families"), ("nets", "Networks")):
        nav.append(f"* {title}")
        for mod in sources.modules_in(FBP / folder):
            short = mod.name.split(".")[-1]
            out[f"{folder}/{short}.md"] = family_page(mod, public, proofs, forward)
            nav.append(f"    * [{short}]({folder}/{short}.md)")
    out["check.md"] = check_page(readme, present)
    out.update(experiments_pages(results))
    out["bench.md"] = bench_page(results, readme, present)
    nav += ["* [Gradient checker](check.md)", "* [Experiments](experiments/index.md)",
            "* [Benchmarks](bench.md)", "* API"]
    for mod in api_modules():
        short = mod.name.split(".", 1)[1]
        out[f"api/{short}.md"] = api_page(mod)
        nav.append(f"    * [fbp.{short}](api/{short}.md)")
    out["SUMMARY.md"] = "\n".join(nav) + "\n"
    return out


def main() -> None:
    import mkdocs_gen_files

    for path, content in pages().items():
        with mkdocs_gen_files.open(path, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)


if __name__ in ("__main__", "<run_path>"):
    main()
