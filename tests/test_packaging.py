"""What the project ships and pins: pyproject.toml's dependencies and extras against
requirements.txt, the wheel (py.typed, the console script, the licence), the rules'
conda environment (envs/fisherlab.yaml) against what the rules' scripts import, and
CITATION.cff / LICENSE."""

from __future__ import annotations

import ast
import functools
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import fisherlab

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# conda-forge names of the packages whose PyPI names differ
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib", "pytorch-cpu": "torch"}


def requirements_txt() -> dict[str, Requirement]:
    """requirements.txt's requirements by canonical name (comments and blank lines skipped)."""
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def pinned_version(req: Requirement) -> str | None:
    specs = list(req.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" else None


def extras() -> dict[str, list[Requirement]]:
    return {name: [Requirement(r) for r in reqs] for name, reqs in PROJECT["optional-dependencies"].items()}


# --- pyproject.toml and requirements.txt -------------------------------------------------------


def test_the_core_dependencies_are_torch_and_numpy():
    assert sorted(canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]) == ["numpy", "torch"]


def test_the_extras():
    ex = extras()
    names = {k: {canonicalize_name(r.name) for r in v} for k, v in ex.items()}
    assert names["report"] == {"pandas", "matplotlib", "seaborn"}
    assert names["data"] == {"torchvision", "pillow", "scikit-learn"}
    assert names["pipeline"] >= {"fisherlab", "snakemake", "snakemake-executor-plugin-slurm", "pyyaml"}
    assert {"report", "data"} <= next(r.extras for r in ex["pipeline"] if r.name == "fisherlab")
    assert names["lightning"] == {"lightning"} and names["huggingface"] == {"transformers", "accelerate"}
    assert names["loggers"] == {"tensorboard", "wandb", "mlflow-skinny", "tqdm"}
    assert names["crosscheck"] == {"backpack-for-pytorch", "curvlinops-for-pytorch"}
    test_extras = next(r.extras for r in ex["test"] if r.name == "fisherlab")
    assert {"pipeline", "lightning", "huggingface", "loggers", "crosscheck"} <= test_extras
    assert "pytest" in names["test"]


def test_requirements_txt_pins_every_dependency_within_pyprojects_ranges():
    """Every package of the core and of every extra is pinned (==) in requirements.txt at a
    version its pyproject range admits, and requirements.txt pins nothing pyproject lacks."""
    pins = requirements_txt()
    declared = [Requirement(r) for r in PROJECT["dependencies"]]
    declared += [r for reqs in extras().values() for r in reqs if canonicalize_name(r.name) != "fisherlab"]
    problems = []
    for req in declared:
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req} is not in requirements.txt")
        elif canonicalize_name(req.name) != "pytest" and pinned_version(pin) is None:
            problems.append(f"requirements.txt does not pin {pin} with ==")
        elif pinned_version(pin) and not req.specifier.contains(pinned_version(pin), prereleases=True):
            problems.append(f"requirements.txt pins {pin}, outside pyproject's {req}")
    known = {canonicalize_name(r.name) for r in declared}
    problems += [f"requirements.txt pins {name}, which pyproject.toml does not name" for name in pins
                 if name not in known]  # fmt: skip
    assert problems == []
    assert (pinned_version(pins["torch"]), pinned_version(pins["torchvision"])) == ("2.14.1", "0.29.1")


@pytest.mark.slow  # builds a wheel (~7 s)
def test_the_wheel_ships_py_typed_the_console_script_and_the_licence(tmp_path):
    """A wheel built from a copy of the checkout: fisherlab/py.typed, the entry point
    ``fisherlab = fisherlab.cli:main``, LICENSE, and Requires-Dist torch and numpy
    unconditionally, everything else under an extra."""
    copy = tmp_path / "src-copy"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(SRC, copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(copy), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("fisherlab-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"fisherlab-{fisherlab.__version__}.dist-info"
        meta = Parser().parsestr(z.read(f"{info}/METADATA").decode())
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert "fisherlab/py.typed" in names and "fisherlab/cli.py" in names
    assert any(n.startswith(info) and n.endswith("LICENSE") for n in names), sorted(names)
    assert re.search(r"^\[console_scripts\]\s*\nfisherlab = fisherlab\.cli:main$", entry_points, re.M), entry_points
    unconditional = sorted(canonicalize_name(Requirement(r).name) for r in meta.get_all("Requires-Dist")
                           if "extra ==" not in r)  # fmt: skip
    assert unconditional == ["numpy", "torch"]
    assert meta["License"] == "MIT" or "MIT" in (meta.get("License-Expression") or "")


# --- envs/fisherlab.yaml: the environment of every rule ----------------------------------------


def conda_env() -> dict[str, str | None]:
    """envs/fisherlab.yaml's packages by canonical PyPI name -> the pinned version (None if unpinned)."""
    spec = yaml.safe_load((ROOT / "envs" / "fisherlab.yaml").read_text())
    out: dict[str, str | None] = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):  # the pip: section
            for line in dep["pip"]:
                req = Requirement(line)
                out[canonicalize_name(req.name)] = pinned_version(req)
        else:
            name, _, version = re.match(r"^([A-Za-z0-9_.\-]+)\s*(=+)?\s*(\S+)?$", dep.strip()).groups()
            out[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = version
    return out


def _names_imported(path: Path) -> tuple[set[str], set[tuple[int, str | None, tuple[str, ...]]]]:
    """Top-level names of the absolute imports in ``path`` (anywhere in it: a function's
    import runs when a rule calls that function), the names ``importlib.util.find_spec``
    looks up by a string literal, and the package-relative imports (level, module, names)."""
    absolute, relative = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            absolute |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = tuple(a.name for a in node.names)
            if node.level:
                relative.add((node.level, node.module, names))
            else:
                absolute.add(node.module or "")
                absolute |= {f"{node.module}.{n}" for n in names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "find_spec"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            absolute.add(node.args[0].value)  # fmt: skip
    return absolute, relative


def _module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def reached_third_party(entry_points: list[Path]) -> dict[str, set[str]]:
    """Top-level third-party modules imported by the given scripts and by every fisherlab
    module they reach (transitively; parent packages included; a name taken from the
    lazy ``fisherlab`` namespace counts as its submodule) -> the files importing each."""
    exports = fisherlab._EXPORTS
    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo: list[tuple[str | None, Path]] = [(None, p) for p in entry_points]
    while todo:
        mod, path = todo.pop()
        absolute, relative = _names_imported(path)
        targets = set()
        for name in absolute:
            top = name.partition(".")[0]
            if top == "fisherlab":
                targets.add(name)
                if name in ("fisherlab",):
                    continue
                if name.count(".") == 1 and name.split(".")[1] in exports:
                    targets.add(f"fisherlab.{exports[name.split('.')[1]]}")
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, set()).add(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
        for level, module, names in relative:
            pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
            base = ".".join(pkg[: len(pkg) - level + 1] + ([module] if module else []))
            targets.add(base)
            targets |= {f"{base}.{n}" for n in names}
            if base == "fisherlab":
                targets |= {f"fisherlab.{exports[n]}" for n in names if n in exports}
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                name = ".".join(parts[:i])
                if name not in seen and (p := _module_path(name)) is not None:
                    seen.add(name)
                    todo.append((name, p))
    return found


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distribution_of(module: str) -> str:
    dists = _distributions().get(module)
    assert dists, f"{module} is imported but no installed distribution provides it"
    return canonicalize_name(dists[0])


def test_the_rules_environment_provides_every_module_the_scripts_import():
    """Every third-party module that a rule's script (workflow/scripts/*.py) imports, or
    that a fisherlab module it reaches imports (module level or in a function), comes from
    a package envs/fisherlab.yaml lists (snakemake itself excepted: Snakemake puts its own
    installation on the script's path)."""
    scripts = sorted((ROOT / "workflow" / "scripts").glob("*.py"))
    imported = reached_third_party(scripts)
    assert {"torch", "numpy", "pandas", "sklearn", "PIL", "torchvision"} <= set(imported), imported  # seen
    env = conda_env()
    missing = {m: sorted(files)[:3] for m, files in imported.items()
               if m != "snakemake" and distribution_of(m) not in env}  # fmt: skip
    assert missing == {}, f"envs/fisherlab.yaml lacks the packages of {missing}"


def test_the_pipeline_extra_provides_what_the_snakefile_imports(tmp_path):
    """The Snakefile and its rule files run in Snakemake's own environment (the extra
    ``pipeline``): every module they import, and every fisherlab module that reaches, comes
    from the core or from ``pipeline`` (with the extras it includes)."""
    lines = [line.strip() for f in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
             for line in f.read_text().splitlines() if re.match(r"^\s*(import|from)\s+\w", line)]  # fmt: skip
    script = tmp_path / "snakefile_imports.py"
    script.write_text("\n".join(line.split("#")[0] for line in lines) + "\n")
    imported = reached_third_party([script])
    assert "snakemake" in imported
    provided, todo = set(), ["pipeline"]
    while todo:
        for req in extras()[todo.pop()]:
            if canonicalize_name(req.name) == "fisherlab":
                todo += sorted(req.extras)
            else:
                provided.add(canonicalize_name(req.name))
    provided |= {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert {m: distribution_of(m) for m in imported if distribution_of(m) not in provided} == {}


def test_the_scan_follows_the_lazy_namespace_and_relative_imports(tmp_path):
    """The scan reaches a module through ``from fisherlab import <name>`` (the lazy
    namespace) and through relative imports: report (pandas) from ``from fisherlab import
    fig4``, and torch from experiment's ``from .trainer import ...``."""
    script = tmp_path / "s.py"
    script.write_text("from fisherlab import fig4\n")
    assert "pandas" in reached_third_party([script])
    script.write_text("import fisherlab.experiment\n")
    assert {"torch", "numpy"} <= set(reached_third_party([script]))
    script.write_text("import json\n")
    assert reached_third_party([script]) == {}


def test_the_rules_environment_pins_the_versions_of_requirements_txt():
    """Every package that both envs/fisherlab.yaml and requirements.txt name has the same
    version in both; the environment's Python satisfies requires-python."""
    env, pins = conda_env(), requirements_txt()
    both = sorted(set(env) & set(pins))
    assert {"torch", "torchvision", "numpy", "pandas", "scikit-learn"} <= set(both)
    assert {n: (env[n], pinned_version(pins[n])) for n in both if env[n] != pinned_version(pins[n])} == {}
    python = env["python"]
    assert python is not None and Requirement(f"python{PROJECT['requires-python']}").specifier.contains(python + ".0")


# --- citation and licence -----------------------------------------------------------------------

PAPER_AUTHORS = ["Jastrzebski", "Arpit", "Astrand", "Kerg", "Wang", "Xiong", "Socher", "Cho", "Geras"]


def test_citation_cff():
    """CITATION.cff (Citation File Format 1.2.0): the required keys, the software's version
    and licence as pyproject states them, and the paper as the preferred citation. (The
    file was also validated against the 1.2.0 JSON schema with ``cffconvert --validate``.)"""
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):
        assert cff.get(key), f"CITATION.cff lacks {key}"
    assert all(a.get("name") or a.get("family-names") for a in cff["authors"])
    assert cff["version"] == fisherlab.__version__ == PROJECT["version"]
    assert cff["license"] == PROJECT["license"]["text"] == "MIT"
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper"
    assert paper["title"] == "Catastrophic Fisher Explosion: Early Phase Fisher Matrix Impacts Generalization"
    assert [a["family-names"] for a in paper["authors"]] == PAPER_AUTHORS
    assert all(a.get("given-names") for a in paper["authors"])
    assert (paper["year"], paper["volume"]) == (2021, 139)
    assert "International Conference on Machine Learning" in paper["collection-title"]
    assert "v139" in paper["url"] and paper["url"] == PROJECT["urls"]["Paper"]


def test_licence():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the fisherlab authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_typed_marker():
    assert (SRC / "fisherlab" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["fisherlab"]
