"""The package's import graph: no cycle, the run plan imports without torch, and the
library (curvature, penalties, training loop, models, data format, the ``fisherlab``
command) works with its core dependencies alone, torch and numpy."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fisherlab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (module level or inside functions).
    ``from . import x`` is an edge to the submodule ``x`` when it exists, else to the
    package itself (``x`` is then a name its __init__ defines)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in modules and t != mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "fisherlab.models.registry" in graph["fisherlab.models.simple_cnn"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_plan_and_the_train_config_import_without_torch():
    code = ("import sys, fisherlab.plan, fisherlab.training.train_config; from fisherlab import TrainConfig, build_plan; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'pandas', 'snakemake')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC)
    assert out.stdout.strip() == "[]"


def test_every_public_name_resolves():
    import fisherlab

    for name in fisherlab.__all__:
        assert getattr(fisherlab, name) is not None


# The optional dependencies (pyproject.toml's extras report, data, pipeline) and SciPy,
# which scikit-learn and others pull in. The library's core must not need any of them.
EXTRAS_ONLY = ["torchvision", "pandas", "matplotlib", "seaborn", "sklearn", "yaml", "snakemake", "PIL", "scipy"]

LEAN = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))

class Hiding(importlib.abc.MetaPathFinder):
    # wraps each finder of sys.meta_path and finds nothing of a blocked package: the
    # package is then absent as if not installed (import raises ModuleNotFoundError,
    # importlib.util.find_spec returns None, as torch._dynamo checks optional modules)
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return self.inner.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.inner, "invalidate_caches", lambda: None)()

sys.meta_path[:] = [Hiding(f) for f in sys.meta_path]
import torch
import fisherlab
from fisherlab.data import DeviceData, load_dataset, make_synthetic, save_dataset
from fisherlab.training.trainer import TrainData

torch.manual_seed(0)
model = fisherlab.build_model("simple_cnn", num_classes=3, image_size=16)
x, y = torch.randn(12, 3, 16, 16), torch.randint(0, 3, (12,))
tr_f = fisherlab.trace_fisher(model, x, generator=0)
tr_h = fisherlab.trace_hessian(model, x, y, num_probes=2, generator=0)
fp = fisherlab.FisherPenalty(alpha=0.01, every=1)
fp.backward(model, x, y, step=0, epoch=0)
assert all(p.grad is not None for p in model.parameters())

save_dataset(sys.argv[2] + "/train.npz", make_synthetic(48, num_classes=3, image_size=16, seed=0))
train = DeviceData(load_dataset(sys.argv[2] + "/train.npz"))
cfg = fisherlab.TrainConfig(model="simple_cnn", model_kwargs={"image_size": 16}, epochs=1, batch_size=16,
                            regularizer="fp", regularizer_kwargs={"alpha": 0.01}, fisher_examples=16,
                            fisher_every=1, train_eval_examples=0)
result = fisherlab.train(cfg, TrainData(train))
assert result.status == "ok" and result.curvature, result.summary
torch.save(result.model.state_dict(), sys.argv[2] + "/model.pt")

from fisherlab.cli import main
main(["trace", "--weights", sys.argv[2] + "/model.pt", "--data", sys.argv[2] + "/train.npz", "--model",
      "simple_cnn", "--model-kwargs", '{"image_size": 16}', "--examples", "8", "--hessian", "--probes", "2"])
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print("LOADED", loaded)
print("TRACES", tr_f, tr_h.estimate, result.summary["max_trace_fisher"])
"""


@pytest.mark.slow  # a fresh interpreter imports torch and trains (~5-15 s)
def test_the_library_works_with_its_core_dependencies_alone(tmp_path):
    """trace_fisher, trace_hessian, FisherPenalty, train (on a saved synthetic data set)
    and ``fisherlab trace`` in a fresh interpreter in which every optional dependency is
    unimportable: a ``sys.meta_path`` finder raises ModuleNotFoundError for each."""
    out = subprocess.run([sys.executable, "-c", LEAN, ",".join(EXTRAS_ONLY), str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout, out.stdout
    assert "Tr(F) = " in out.stdout and "Tr(H) = " in out.stdout, out.stdout
    traces = [float(v) for v in out.stdout.split("TRACES")[1].split()]
    assert all(math.isfinite(v) for v in traces) and traces[0] > 0 and traces[2] > 0, traces


def test_the_blocking_finder_blocks(tmp_path):
    """The finder of the test above does make a blocked module unimportable."""
    code = LEAN.split("import torch")[0] + (
        "import importlib.util, numpy\nassert importlib.util.find_spec('pandas') is None\nimport pandas\n")
    out = subprocess.run([sys.executable, "-c", code, "pandas", str(tmp_path)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)  # fmt: skip
    assert out.returncode != 0 and "No module named 'pandas'" in out.stderr, out.stderr[-2000:]


def test_no_core_module_imports_an_extra_at_module_level():
    """Every module but the report package (the ``report`` extra) and the pipeline-only
    data preparation imports the optional dependencies inside the functions that need
    them; the test above proves it for the modules it reaches, this for all the others."""
    exempt = {"fisherlab.report"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        mod = module_name(path)
        if any(mod == e or mod.startswith(e + ".") for e in exempt):
            continue
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{mod}: {n}" for n in names if n.partition(".")[0] in EXTRAS_ONLY]
    assert offenders == []
