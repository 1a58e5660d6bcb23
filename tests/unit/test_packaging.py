"""The repo's promises about itself: dependencies in sync, notebooks paired, Colab badges,
README commands present, shared data not committed."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    wanted |= {_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def test_every_notebook_source_has_an_identical_paired_ipynb(tmp_path):
    assert NOTEBOOKS, "no notebooks found"
    jupytext = Path(sys.executable).parent / "jupytext"
    for py in NOTEBOOKS:
        ipynb = py.with_suffix(".ipynb")
        assert ipynb.exists(), f"{py.name} has no paired {ipynb.name}"
        copy = tmp_path / ipynb.name
        copy.write_bytes(ipynb.read_bytes())
        subprocess.run([str(jupytext), "--quiet", "--to", "ipynb", "--update", "--output",
                        str(copy), str(py)], check=True)
        assert copy.read_bytes() == ipynb.read_bytes(), (
            f"{py.name} and {ipynb.name} disagree: run `make sync` and commit both")


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_shape_badge_setup_and_parameters(py):
    import jupytext

    nb = jupytext.read(py)
    first = nb.cells[0]
    badge = (f"https://colab.research.google.com/github/loudfacts/loudfacts/blob/main/"
             f"notebooks/{py.stem}.ipynb")
    assert first.cell_type == "markdown" and badge in first.source, f"{py.name}: Colab badge"
    setup = [c for c in nb.cells if "colab-setup" in c.metadata.get("tags", [])]
    assert len(setup) == 1, f"{py.name}: exactly one colab-setup cell"
    assert 'if "google.colab" in sys.modules' in setup[0].source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{py.name}: exactly one parameters cell"
    assert "model_name" in params[0].source and "seed" in params[0].source
    # Literals only: papermill injects its values after this cell, so anything derived here
    # would silently keep the default.
    import ast

    for stmt in ast.parse(params[0].source).body:
        assert isinstance(stmt, ast.Assign), f"{py.name}: parameters cell holds {ast.dump(stmt)[:60]}"
        try:
            ast.literal_eval(stmt.value)
        except ValueError:
            raise AssertionError(
                f"{py.name}: parameter {ast.unparse(stmt.targets[0])} is not a literal") from None


def test_colab_setup_cell_is_inert_outside_colab():
    import jupytext

    for py in NOTEBOOKS:
        cell = next(c for c in jupytext.read(py).cells
                    if "colab-setup" in c.metadata.get("tags", []))
        before = set(sys.modules)
        exec(compile(cell.source, py.name, "exec"), {})  # must not clone or install anything
        assert "google.colab" not in sys.modules
        assert set(sys.modules) - before <= {"subprocess"}


def test_params_files_name_existing_notebooks():
    stems = {p.stem for p in NOTEBOOKS} | {p.stem[:2] for p in NOTEBOOKS} | {"common"}
    for f in ["smoke.yaml", "report.yaml", "gpu.yaml", "gpu-smollm2.yaml"]:
        data = yaml.safe_load((ROOT / "params" / f).read_text())
        assert set(data) <= stems, f"params/{f} has sections for no notebook: {set(data) - stems}"


def test_readme_gives_the_two_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make report" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_shared_data_and_weights_are_not_committed():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout
    bad = [f for f in files.splitlines()
           if re.search(r"(counterfact-(edit|train)[^/]*\.json|known_1000\.json|wikitext-2-raw"
                        r"|lee_background\.cor|\.gguf|\.safetensors)$", f)]
    assert not bad, f"shared data or weights are tracked: {bad}"


def test_params_files_set_only_parameters_the_notebooks_declare():
    """A misspelt or stale key in a parameter file would be injected and silently ignored."""
    import jupytext

    declared = {}
    for py in NOTEBOOKS:
        cell = next(c for c in jupytext.read(py).cells
                    if "parameters" in c.metadata.get("tags", []))
        names: dict = {}
        exec(compile(cell.source, py.name, "exec"), {}, names)
        declared[py.stem] = set(names)
    for f in ["smoke.yaml", "report.yaml", "gpu.yaml", "gpu-smollm2.yaml"]:
        data = yaml.safe_load((ROOT / "params" / f).read_text())
        common = set(data.get("common") or {})
        for stem, names in declared.items():
            section = set(data.get(stem) or {}) | set(data.get(stem[:2]) or {})
            unknown = section - names
            assert not unknown, f"params/{f} [{stem}] sets undeclared parameters {unknown}"
            # common keys must be declared by every notebook that receives them
            assert common <= names | {"device"}, f"params/{f} common keys {common - names} " \
                f"are not parameters of {stem}"


def _private_uses(source: str) -> list[str]:
    """Leading-underscore names of loudfacts that `source` imports or reaches into."""
    import ast

    tree = ast.parse(source)
    bound, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loudfacts"):
            for a in node.names:
                if a.name.startswith("_"):
                    found.append(f"from {node.module} import {a.name}")
                bound.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("loudfacts"):
                    bound.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                found.append(f"{ast.unparse(node)} (line {node.lineno})")
    return found


def test_private_name_check_catches_both_shapes():
    src = ("from loudfacts.editing import finetune\nfrom loudfacts.x import _y\n"
           "print(finetune._FineTuneEditor._compute)\nimport loudfacts.evaluation as ev\n"
           "ev._plan\nother._fine\n")
    found = _private_uses(src)
    assert "from loudfacts.x import _y" in found
    assert any(f.startswith("finetune._FineTuneEditor._compute") for f in found)
    assert any(f.startswith("ev._plan") for f in found)
    assert not any("other" in f for f in found)


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_use_only_public_names_of_the_package(py):
    """The names notebooks use are public: none imports or reaches into a `_name` of loudfacts."""
    assert _private_uses(py.read_text()) == []


def test_evaluation_namespace_reexports_every_public_name_of_its_modules():
    """`loudfacts.evaluation` (the notebooks' `ev`) is only a namespace over metrics, probes,
    runner, ladder and implications: every public name of those is reachable through it, as the
    same object, and it defines nothing of its own."""
    import importlib
    import inspect

    ev = importlib.import_module("loudfacts.evaluation")
    own = set()
    for mod_name in ("metrics", "probes", "runner", "ladder", "implications"):
        mod = importlib.import_module(f"loudfacts.{mod_name}")
        for name, obj in vars(mod).items():
            if name.startswith("_") or inspect.ismodule(obj):
                continue
            if getattr(obj, "__module__", mod.__name__) != mod.__name__ and not name.isupper():
                continue  # imported into that module, not defined there
            own.add(name)
            assert getattr(ev, name, None) is obj, f"loudfacts.evaluation lacks {mod_name}.{name}"
    for name, obj in vars(ev).items():
        if callable(obj) and not name.startswith("_") and not inspect.ismodule(obj):
            assert obj.__module__ != "loudfacts.evaluation", f"evaluation defines {name} itself"
