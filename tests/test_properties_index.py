"""The spec's own rules: every property states its law, and properties/README.md is the index those laws generate."""

import ast

import pytest

from properties import index


def test_the_committed_index_is_up_to_date():
    if index.README.read_text(encoding="utf-8") != index.render():
        pytest.fail(f"properties/README.md is out of date: run `{index.COMMAND}` and commit the result")


def test_the_index_check_names_the_command(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "README.md"
    stale.write_text("# an old index\n", encoding="utf-8")
    monkeypatch.setattr(index, "README", stale)
    assert index.main(["--check"]) == 1
    assert f"run `{index.COMMAND}`" in capsys.readouterr().err
    assert index.main([]) == 0 and index.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == index.render()


@pytest.mark.parametrize("path", index.property_files(), ids=index.name)
def test_every_property_states_its_law(path):
    """Each test in properties/ has a docstring, and the file has one: the index is made of their first lines."""
    title, tests = index.laws(path)
    assert title, f"{index.name(path)} has no module docstring"
    missing = [name for name, law in tests if not law]
    assert not missing, f"{index.name(path)}: no law stated (docstring) for {missing}"


def test_every_hypothesis_property_is_indexed():
    """A @given test nested in a class or defined under another name would be run but left out of the index."""
    for path in index.property_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        given = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                 and any("given" in ast.unparse(d) for d in node.decorator_list)}
        indexed = {name for name, _ in index.laws(path)[1]}
        assert given <= indexed, f"{index.name(path)}: {sorted(given - indexed)} are not top-level test functions"
