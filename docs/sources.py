"""What the docs generator reads from the repository, statically (ast; nothing is imported).

The site is built from the source as it stands, so a module another branch adds
(``fbp/ops/conv.py``, ``fbp/autodiff/``) gets its page without anyone editing the docs:

* ``public_names()``: ``fbp.__all__`` and the module each name is imported from;
* ``Module``: one source file's top-level definitions, its ``custom_vjp`` registrations
  (``_op.defvjp(_op_fwd, _op_bwd)``) and the source of the rule a public function calls;
* ``Proofs``: which tests (and the op table of ``python -m fbp.check``) name an op.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FBP = ROOT / "fbp"


def public_names() -> dict[str, str]:
    """``{name: module}`` for every name in ``fbp.__all__``, in the order of ``__all__``."""
    tree = ast.parse((FBP / "__init__.py").read_text())
    origin, names = {}, []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                origin[alias.asname or alias.name] = node.module
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            names = list(ast.literal_eval(node.value))
    return {n: origin.get(n, "fbp") for n in names}


def is_alias_module(path: Path) -> bool:
    """The old module paths (``fbp/activations.py``) only hand ``sys.modules`` another module."""
    return "sys.modules[__name__] =" in path.read_text()


def dotted(path: Path) -> str:
    """``fbp/ops/conv.py`` → ``fbp.ops.conv``; ``fbp/autodiff/__init__.py`` → ``fbp.autodiff``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Module:
    """One source file: its docstring, top-level definitions and custom_vjp rules."""

    def __init__(self, path: Path):
        self.path = path
        self.name = dotted(path)
        self.source = path.read_text()
        self.lines = self.source.splitlines()
        self.tree = ast.parse(self.source)
        self.doc = ast.get_docstring(self.tree) or ""
        self.defs: dict[str, ast.AST] = {}
        self.rules: dict[str, ast.AST] = {}     # custom_vjp name -> its `.defvjp(...)` call
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                self.defs[node.name] = node
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        self.defs[t.id] = node
            elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                func = node.value.func
                if (isinstance(func, ast.Attribute) and func.attr in ("defvjp", "defjvp")
                        and isinstance(func.value, ast.Name)):
                    self.rules[func.value.id] = node

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else self.name

    def public(self) -> list[str]:
        """Public top-level functions and classes, in source order."""
        return [n for n, node in self.defs.items()
                if not n.startswith("_") and isinstance(node, (ast.FunctionDef, ast.ClassDef))]

    def is_function(self, name: str) -> bool:
        return isinstance(self.defs.get(name), ast.FunctionDef)

    def docstring(self, name: str) -> str:
        node = self.defs.get(name)
        ok = isinstance(node, (ast.FunctionDef, ast.ClassDef))
        return (ast.get_docstring(node) or "") if ok else ""

    def segment(self, node: ast.AST) -> str:
        decorators = getattr(node, "decorator_list", [])
        start = min([d.lineno for d in decorators] + [node.lineno])
        return "\n".join(self.lines[start - 1:node.end_lineno])

    def rule_source(self, name: str) -> str:
        """The hand-written rule ``name`` calls: ``_op``, ``_op_fwd``, ``_op_bwd``, ``defvjp``."""
        node = self.defs.get(name)
        if node is None:
            return ""
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        parts = []
        for rule in [r for r in self.rules if r in used]:
            call = self.rules[rule].value
            pieces = [rule] + [a.id for a in call.args if isinstance(a, ast.Name)]
            parts += [self.segment(self.defs[p]) for p in pieces if p in self.defs]
            parts.append(self.segment(self.rules[rule]))
        return "\n\n".join(parts)


def modules_in(folder: Path) -> list[Module]:
    """Every public module of a package folder (not ``__init__``, not ``_private``), by name."""
    return [Module(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]


def tutorial_sections(text: str) -> list[str]:
    """The tutorial sections a docstring cites (``§7.2``), in order, each once."""
    return list(dict.fromkeys(re.findall(r"§\s?(\d+(?:\.\d+)?)", text)))


def labelled(doc: str, label: str) -> str:
    """The text after ``Label:`` in a docstring, continuation lines joined, up to a blank line
    or the next label."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(label + ":"):
            out = [line[len(label) + 1:].strip()]
            for more in lines[i + 1:]:
                if not more.strip() or re.match(r"^[A-Z][\w ,]*:", more):
                    break
                out.append(more.strip())
            return " ".join(out)
    return ""


class Proofs:
    """Which test functions name an op, and whether the op table of ``fbp.check`` holds it."""

    def __init__(self):
        self.files = {p: p.read_text() for p in sorted((ROOT / "tests").glob("*.py"))}
        self.funcs = {p: self._test_functions(text) for p, text in self.files.items()
                      if p.name.startswith("test_")}
        check = FBP / "check"
        self.op_table = "\n".join(p.read_text() for p in sorted(check.glob("op_*.py")))

    @staticmethod
    def _test_functions(text: str) -> list[tuple[str, str]]:
        """``[(name, source with decorators)]`` of a file's top-level test functions."""
        lines, out = text.splitlines(), []
        for f in ast.parse(text).body:
            if isinstance(f, ast.FunctionDef) and f.name.startswith("test"):
                start = min([d.lineno for d in f.decorator_list] + [f.lineno])
                out.append((f.name, "\n".join(lines[start - 1:f.end_lineno])))
        return out

    @staticmethod
    def _pattern(name: str) -> re.Pattern:
        return re.compile(rf"\bfbp(?:\.\w+)*\.{re.escape(name)}\b")

    def tests(self, name: str) -> list[tuple[str, list[str]]]:
        """``[(test file, [test functions])]`` that call ``fbp….name``; a helper module
        (``tests/_ops.py``) that names it stands for every test file importing it."""
        pattern, found = self._pattern(name), []
        helpers = [p.stem for p, text in self.files.items()
                   if p.name.startswith("_") and pattern.search(text)]
        for path, funcs in self.funcs.items():
            text = self.files[path]
            hits = [f for f, source in funcs if pattern.search(source)]
            via = [h for h in helpers if re.search(rf"\b(?:tests\.{h}\b|import {h}\b)", text)]
            items = hits + [f"every test here, through tests/{h}.py" for h in via]
            if items or pattern.search(text):
                found.append((f"tests/{path.name}", items or ["its module-level cases"]))
        return found

    def in_op_table(self, name: str) -> bool:
        return re.search(rf"\.{re.escape(name)}\b", self.op_table) is not None
