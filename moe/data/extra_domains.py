"""Two more offline domains for the embedded corpus, whose byte statistics differ clearly from code and
prose, so that routing specialisation has a known answer: with D domains of equal size, I(domain;
expert) is at most log D, reached when the domains use disjoint experts.

- ``arithmetic``: synthetic equations, one per line — ``4821 + 937 = 5758``, ``-36 * 7 = -252`` —
  sums and differences of 1–4 digit numbers and products of 1–3 digit ones, always correct. Document
  i (64 lines) is drawn from ``random.Random("arithmetic:<i>")``: the same on every machine and
  Python, whatever the seed of the run.
- ``markup``: an XML outline of each stdlib module, read with ``ast`` (nothing is imported): nested
  ``<class>`` and ``<function>`` elements with their line, bases and argument list, and a
  ``<summary>`` element holding the first line of the docstring. Its split key is the module's path,
  so a module's outline, code and docstrings always fall on the same side of the train/val split.
"""

from __future__ import annotations

import ast
import random
from xml.sax.saxutils import escape, quoteattr

ARITHMETIC_LINES_PER_DOCUMENT = 64


def arithmetic_document(index: int) -> str:
    rng = random.Random(f"arithmetic:{index}")
    lines = []
    for _ in range(ARITHMETIC_LINES_PER_DOCUMENT):
        op = rng.choice("+-*")
        digits = 3 if op == "*" else 4
        a, b = (rng.randint(0, 10 ** rng.randint(1, digits) - 1) for _ in range(2))
        a = -a if rng.random() < 0.1 else a
        lines.append(f"{a} {op} {b} = {a + b if op == '+' else a - b if op == '-' else a * b}")
    return "\n".join(lines) + "\n"


def arithmetic_documents(min_bytes: int) -> list[tuple[str, str]]:
    """(id, text) of documents 0, 1, ... until they hold ``min_bytes`` bytes (the domain's cap)."""
    documents, total, index = [], 0, 0
    while total < min_bytes:
        text = arithmetic_document(index)
        documents.append((f"arithmetic:{index}", text))
        total += len(text)
        index += 1
    return documents


def _summary(node: ast.AST) -> str | None:
    doc = ast.get_docstring(node)
    first = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
    return first or None


def _outline(node: ast.AST, depth: int, lines: list[str]) -> None:
    """Append the elements of the classes and functions defined in ``node``'s statement lists."""
    pad = "  " * depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in child.bases)
            opening = f"{pad}<class name={quoteattr(child.name)} line=\"{child.lineno}\" bases={quoteattr(bases)}"
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kind = "async-function" if isinstance(child, ast.AsyncFunctionDef) else "function"
            opening = (f"{pad}<{kind} name={quoteattr(child.name)} line=\"{child.lineno}\" "
                       f"args={quoteattr(ast.unparse(child.args))}")
        else:
            if isinstance(child, ast.stmt):  # defs inside if/try/with blocks count too
                _outline(child, depth, lines)
            continue
        tag = opening.split()[0].lstrip("<")
        inner: list[str] = []
        if summary := _summary(child):
            inner.append(f"{pad}  <summary>{escape(summary)}</summary>")
        _outline(child, depth + 1, inner)
        lines.extend([opening + ">", *inner, f"{pad}</{tag}>"] if inner else [opening + "/>"])


def markup_document(path: str, tree: ast.Module) -> str:
    lines = [f"<module path={quoteattr(path)}>"]
    if summary := _summary(tree):
        lines.append(f"  <summary>{escape(summary)}</summary>")
    _outline(tree, 1, lines)
    return "\n".join([*lines, "</module>"]) + "\n"
