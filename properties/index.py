"""Write properties/README.md, the index of the laws, from the property docstrings: `python -m properties.index`.

Each `test_*.py` under properties/, its folders included, becomes a section headed by its path relative to
properties/ (`engine/test_kinds.py`) and its module docstring's first paragraph; each test in it a line with its
test id and its docstring's first line (the law). Sections come in the order of their paths, folder by folder. The
files are read with `ast`, never imported. `--check` exits 1, naming the command, when the committed page differs
from what it would write.
"""

import ast
import sys
from pathlib import Path

HERE = Path(__file__).parent
README = HERE / "README.md"
COMMAND = "python -m properties.index"

INTRO = f"""# Properties: the laws, one sentence each

Every test here is a hypothesis property whose docstring states its law in one line of math
and then why it holds. This page indexes them: each law's first line and its test id, file by
file. Run them with `pytest properties`; choose the profile with `HYPOTHESIS_PROFILE=dev|ci|thorough`.

The folders follow the code's parts: `engine/` holds the laws of core/engine (layer kinds, folds, error bounds),
`makemore/` those of core/makemore (data, layers, zero init, training, evaluation, checkpoints); the files in
properties/ itself hold the laws of core/atomic.py, of the reference statistics (exact.py) and of the strategies.

This page is generated from the docstrings by `{COMMAND}`: edit the docstrings, then run it
(a test fails while the page is out of date).
"""


def first_line(docstring: str | None) -> str:
    lines = (docstring or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def first_paragraph(docstring: str | None) -> str:
    return " ".join(line.strip() for line in (docstring or "").strip().split("\n\n")[0].splitlines())


def laws(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """(the module docstring's first paragraph, [(test id, the law's first line)]) of one property file, in order."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    tests = [(node.name, first_line(ast.get_docstring(node))) for node in tree.body
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")]
    return first_paragraph(ast.get_docstring(tree)), tests


def property_files(root: Path = HERE) -> list[Path]:
    """Every test_*.py under root, its folders included, in the order of their paths relative to root."""
    return sorted(root.rglob("test_*.py"), key=lambda path: path.relative_to(root).parts)


def name(path: Path, root: Path = HERE) -> str:
    """A property file's path relative to root, as the index heads its section: `engine/test_kinds.py`."""
    return path.relative_to(root).as_posix()


def render(root: Path = HERE) -> str:
    sections = [INTRO]
    for path in property_files(root):
        title, tests = laws(path)
        lines = [f"## `{name(path, root)}`" + (f": {title}" if title else ""), ""]
        lines += [f"- `{test}`: {law or '(no docstring: state the law)'}" for test, law in tests]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if README.read_text(encoding="utf-8") != text:
            print(f"{README} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    README.write_text(text, encoding="utf-8")
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
