"""The documents a user reads first hold what they promise: the README's snippet runs as written and is short, and
the design page's tree names every module that exists and nothing else."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DESIGN = ROOT / "docs" / "design.md"
README_LIMIT = 8000  # characters: what bnfold is, the quick start, one snippet, the commands, the laws in brief


def section(text: str, heading: str) -> str:
    """The body of the markdown section `heading` (up to the next heading of any level)."""
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    following = re.search(r"\n#+ ", text[start:])
    return text[start:start + following.start()] if following else text[start:]


def code_block(text: str, language: str = "") -> str:
    """The first fenced code block of `text` in `language`."""
    match = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert match, f"no ```{language} block"
    return match.group(1)


def test_the_readme_is_for_users_and_short():
    assert len(README.read_text(encoding="utf-8")) < README_LIMIT


def test_the_readme_quick_start_is_two_commands_and_ci_runs_the_second():
    commands = code_block(section(README.read_text(encoding="utf-8"), "## Quick start"), "bash").splitlines()
    assert commands == ['pip install -e ".[test]" && bnfold reproduce', 'pip install -e ".[test]" && pytest']
    assert (ROOT / ".ci" / "run").read_text(encoding="utf-8").rstrip().splitlines()[-1] == commands[1]


def test_the_readme_snippet_folds_certifies_and_exports_as_it_says(tmp_path, monkeypatch):
    """The "Fold your own model" snippet, run verbatim, leaves a folded model whose certificate holds, and an ONNX
    file that computes it."""
    monkeypatch.chdir(tmp_path)
    snippet = code_block(section(README.read_text(encoding="utf-8"), "## Fold your own model"), "python")
    namespace: dict = {}
    with torch.random.fork_rng(devices=[]):  # the snippet draws weights and inputs from the global RNG
        torch.manual_seed(0)
        exec(compile(snippet, "README.md", "exec"), namespace)
    certificate = namespace["certificate"]
    assert certificate.holds and len(certificate.pairs) == 20 and (tmp_path / "folded.onnx").exists()


def design_tree() -> set[str]:
    """The paths the tree at the top of docs/design.md names: `name/` opens a folder, two spaces per level."""
    tree = code_block(section(DESIGN.read_text(encoding="utf-8"), "## The parts"))
    paths, folders = set(), []
    for line in tree.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            paths.add("/".join([*folders, name]))
    return paths


def modules() -> set[str]:
    """Every module of core/ but the faces of its subpackages (their __init__.py)."""
    found = {str(p.relative_to(ROOT)) for p in (ROOT / "core").rglob("*.py") if "__pycache__" not in p.parts}
    return {p for p in found if not (p.endswith("/__init__.py") and p != "core/__init__.py")}


def test_the_design_tree_names_every_module_and_only_those():
    named = {p for p in design_tree() if p.endswith(".py")}
    assert sorted(modules() - named) == [], "modules that docs/design.md does not name"
    assert sorted(named - modules()) == [], "modules docs/design.md names that do not exist"
