"""The conformance matrix: every law run against every folder, a minimal counterexample for each failure, written as
markdown and JSON.

Each cell is one hypothesis `find` over the law's case family: derandomized, `examples` cases, and on a violation
the case shrunk to a minimal one (within `shrink_seconds`; the smallest found by then is reported, each candidate
checked once). A folder whose packages are missing is "not installed", a law on a family the folder does not claim
"not supported", a law that cannot be checked for a reason of the suite's own (an ONNX op it does not compute)
"error"; neither is ever a "fail".
"""

import json
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.atomic import atomic_write_text
from core.conform.cases import Case
from core.conform.folder import Folder, peer
from core.conform.known import KnownIssue, known_issue
from core.conform.laws import LAWS, Law, Violation, raised

PASS, FAIL, UNSUPPORTED, NOT_INSTALLED, ERROR = "pass", "fail", "not supported", "not installed", "error"
SHRINK_SECONDS = 90.0


@dataclass(frozen=True)
class Counterexample:
    """A minimal case on which a folder breaks a law; `inherited` names the upstream folder (the export an ONNX
    optimizer starts from) that breaks the law on the same case by itself, if one does."""

    case: Case
    violation: Violation
    issue: KnownIssue | None
    inherited: str | None = None


@dataclass(frozen=True)
class Cell:
    status: str
    counterexample: Counterexample | None = None
    note: str = ""


@dataclass(frozen=True)
class Row:
    folder: Folder
    version: str
    missing: str | None
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass(frozen=True)
class Matrix:
    rows: tuple[Row, ...]
    laws: tuple[Law, ...]
    examples: int
    seconds: float


def run_cell(folder: Folder, law: Law, examples: int, shrink_seconds: float = SHRINK_SECONDS) -> Cell:
    """One law against one folder (module docstring)."""
    if law.family not in folder.claims:
        return Cell(UNSUPPORTED)
    hypothesis = peer("hypothesis", "bnfold conform")
    no_such_example = peer("hypothesis.errors", "bnfold conform").NoSuchExample
    from core.conform.strategies import cases
    seen: dict[str, Violation | None] = {}
    errors: list[str] = []
    first_found: list[float] = []

    def violated(case: Case) -> bool:
        key = case.code()
        if key not in seen:
            if first_found and time.monotonic() - first_found[0] > shrink_seconds:
                return False  # shrinking has had its time: the smallest counterexample so far stands
            try:
                seen[key] = law.check(folder, case)
            except Exception as e:  # the suite's own gap, not the folder's (the laws catch the folder's errors)
                errors.append(raised(e))
                seen[key] = None
            if seen[key] is not None and not first_found:
                first_found.append(time.monotonic())
        return seen[key] is not None

    chosen = hypothesis.settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                                 verbosity=hypothesis.Verbosity.quiet)
    try:
        case = hypothesis.find(cases(law.family), violated, settings=chosen)
    except no_such_example:
        return Cell(ERROR, note=errors[0]) if errors else Cell(PASS)
    violation = seen[case.code()]
    assert violation is not None
    upstream = folder.upstream()
    inherited = None
    if upstream is not None and law.family in upstream.claims and law.check(upstream, case) is not None:
        inherited = upstream.name
    issue = known_issue(folder.name if inherited is None else inherited, law, case, violation)
    return Cell(FAIL, Counterexample(case, violation, issue, inherited))


def run_matrix(folders: list[Folder], examples: int, progress: Callable[[str], None] | None = None,
               shrink_seconds: float = SHRINK_SECONDS, laws: tuple[Law, ...] = LAWS) -> Matrix:
    """Every law against every folder."""
    start = time.monotonic()
    rows = []
    for folder in folders:
        missing = folder.missing()
        rows.append(Row(folder, folder.version() if missing is None else "—", missing))
    for law in laws:  # law by law: the folders draw the same cases in turn, and the ONNX ones share their exports
        for row in rows:
            began = time.monotonic()
            cell = Cell(NOT_INSTALLED, note=row.missing) if row.missing else run_cell(row.folder, law, examples,
                                                                                      shrink_seconds)
            row.cells[law.name] = cell
            if progress is not None:
                progress(f"{law.name} · {row.folder.name}: {cell.status} ({time.monotonic() - began:.1f} s)")
    return Matrix(tuple(rows), laws, examples, time.monotonic() - start)


def anchor(folder: Folder, law: Law) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{folder.name} {law.name}".lower()).strip("-")


def reproduction(folder: Folder, law: Law, example: Counterexample) -> str:
    """Python that rebuilds the case, folds it as the folder does, and says what the law expects."""
    return "\n".join([example.case.code(), "", folder.usage_for(example.case.build()), folder.show, "",
                      f"# law: {law.statement}", f"# seen: {example.violation.detail}"])


def issue_text(example: Counterexample) -> str:
    inherited = (f"; {example.inherited} alone breaks this law on this case: the failure comes with the "
                 f"export, not from this optimizer") if example.inherited else ""
    if example.issue is None:
        return f"no known upstream issue{inherited}"
    return f"[{example.issue.reference}]({example.issue.url}): {example.issue.summary}{inherited}"


def markdown(matrix: Matrix) -> str:
    """docs/conformance.md: the matrix, the laws, and every failure with its counterexample."""
    laws = matrix.laws
    lines = ["# Conformance of BatchNorm folders", "",
             f"Written by `bnfold conform --examples {matrix.examples}`: each law of `core/conform/laws.py` run "
             f"against each folder on {matrix.examples} cases drawn by hypothesis, derandomized (the same versions "
             "give the same cells), each failure shrunk to a minimal counterexample (the smallest found within "
             f"{SHRINK_SECONDS:.0f} s). A cell is **fail** (a link to its counterexample), pass, not supported (the "
             "folder does not claim the law's cases) or not installed. **fail** (export) marks an ONNX optimizer's "
             "failure that comes with torch.onnx's export: the export alone, the row \"torch.onnx export (no "
             "optimizer)\", breaks the law on the same case. The ONNX folders' artefacts are computed op for op "
             "with torch's kernels (`core/conform/onnx_graph.py`), so what differs from the original is the "
             "folder's doing. docs/design.md, \"Conformance\", says how a folder is added.", "",
             f"Python {platform.python_version()}; each folder's package and its version are in its row.", "",
             "| folder | version | " + " | ".join(law.name for law in laws) + " |",  # the matrix: first table
             "| --- | --- | " + " | ".join("---" for _ in laws) + " |"]
    for row in matrix.rows:
        cells = []
        for law in laws:
            cell = row.cells[law.name]
            if cell.status == FAIL:
                assert cell.counterexample is not None
                label = "**fail** (export)" if cell.counterexample.inherited else "**fail**"
                cells.append(f"[{label}](#{anchor(row.folder, law)})")
            else:
                cells.append(cell.status)
        version = f"{row.folder.distribution} {row.version}"
        lines.append(f"| {row.folder.name} | {version} | " + " | ".join(cells) + " |")
    lines += ["", "## The laws", ""]
    for check in dict.fromkeys(law.check for law in laws):
        columns = ", ".join(f"{law.name} (`{law.family}`)" for law in laws if law.check is check)
        first = next(law for law in laws if law.check is check)
        lines += [f"- **{columns}**: {first.statement} {first.why}"]
    lines += ["", "## Failures", ""]
    failures = [(row, law, row.cells[law.name]) for row in matrix.rows for law in laws
                if row.cells[law.name].status == FAIL]
    if not failures:
        lines.append("None.")
    for row, law, cell in failures:
        assert cell.counterexample is not None
        example = cell.counterexample
        lines += [f'### <a id="{anchor(row.folder, law)}"></a>{row.folder.name} · {law.name}', "",
                  f"- known issue: {issue_text(example)}", f"- case: {example.case.describe()}",
                  f"- seen: {example.violation.detail}", "", "```python", reproduction(row.folder, law, example),
                  "```", ""]
    errors = [(row, law, row.cells[law.name]) for row in matrix.rows for law in laws
              if row.cells[law.name].status == ERROR]
    if errors:
        lines += ["## Not checked", ""]
        lines += [f"- {row.folder.name} · {law.name}: {cell.note}" for row, law, cell in errors]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def as_data(matrix: Matrix) -> dict[str, Any]:
    """docs/conformance.json: the same as plain data."""
    rows = []
    for row in matrix.rows:
        cells: dict[str, Any] = {}
        for law in matrix.laws:
            cell = row.cells[law.name]
            entry: dict[str, Any] = {"status": cell.status}
            if cell.note:
                entry["note"] = cell.note
            if cell.counterexample is not None:
                example = cell.counterexample
                entry["counterexample"] = {
                    "case": example.case.describe(), "violation": example.violation.kind,
                    "seen": example.violation.detail, "inherited_from": example.inherited,
                    "known_issue": None if example.issue is None else {
                        "reference": example.issue.reference, "url": example.issue.url,
                        "summary": example.issue.summary},
                    "code": reproduction(row.folder, law, example)}
            cells[law.name] = entry
        rows.append({"folder": row.folder.name, "package": row.folder.distribution, "version": row.version,
                     "missing": row.missing, "claims": sorted(row.folder.claims),
                     "fold_roundings": row.folder.fold_roundings, "cells": cells})
    return {"examples": matrix.examples, "python": platform.python_version(),
            "laws": [{"name": law.name, "family": law.family, "statement": law.statement, "why": law.why}
                     for law in matrix.laws],
            "folders": rows}


def write(matrix: Matrix, markdown_path: str, json_path: str) -> None:
    """Both files, each atomically."""
    atomic_write_text(markdown_path, markdown(matrix))
    atomic_write_text(json_path, json.dumps(as_data(matrix), indent=1, ensure_ascii=False) + "\n")


def bnfold_failures(matrix: Matrix) -> list[str]:
    """The laws bnfold fails, by column: bnfold must pass every law in its scope."""
    return [law.name for row in matrix.rows if row.folder.name == "bnfold" for law in matrix.laws
            if row.cells[law.name].status in (FAIL, ERROR)]
