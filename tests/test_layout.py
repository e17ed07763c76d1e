"""The package's layout rules: every module imports, no import cycles, only dist/ knows
launchers and torch.distributed, and no module takes another package's private names
(docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ds_twophase"
# Where a launcher puts ranks and sizes: only dist.py may read these.
LAUNCHER_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "WORLD_SIZE")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def package_of(name: str, modules: dict[str, Path] = MODULES) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to itself)."""
    return name if modules[name].name == "__init__.py" else name.rpartition(".")[0]


def imported_module(node: ast.ImportFrom, package: str) -> str:
    """The module an ``ImportFrom`` in ``package`` reads from, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> set[str]:
    """The package modules ``name`` imports anywhere in its code (also inside functions, where
    the lazy imports are), except under ``if TYPE_CHECKING``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = package_of(name)
    out: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base_name = imported_module(node, package)
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
            targets = [
                f"{base_name}.{alias.name}" if f"{base_name}.{alias.name}" in MODULES else base_name
                for alias in node.names
            ]
        else:
            continue
        out.update(t for t in targets if t in MODULES and t != name)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_sees_lazy_and_relative_imports():
    assert "ds_twophase.train" in imports_of("ds_twophase.cli")  # inside a function
    assert "ds_twophase.dist" in imports_of("ds_twophase.trainer.trainer")  # from .. import dist
    assert "ds_twophase.trainer.checkpoint" in imports_of("ds_twophase.trainer.trainer")


def test_no_import_cycles():
    graph = {name: imports_of(name) for name in MODULES}
    assert find_cycle(graph) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_only_dist_knows_launchers_and_torch_distributed():
    offenders = []
    for name, path in MODULES.items():
        if name == "ds_twophase.dist" or name.startswith("ds_twophase.dist."):
            continue
        text = path.read_text()
        if "torch.distributed" in text or any(f'"{var}"' in text for var in LAUNCHER_VARS):
            offenders.append(name)
    assert offenders == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports_across_packages(name: str, modules: dict[str, Path] = MODULES) -> list[str]:
    """``module._name`` for every private name of a package module that ``name`` takes from a
    module of another package: ``from x import _name``, or ``x._name`` on a module it imported."""
    tree = ast.parse(modules[name].read_text())
    package = package_of(name, modules)
    bound: dict[str, str] = {}  # local name -> the package module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = imported_module(node, package)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif source in modules and _private(alias.name):
                    if package_of(source, modules) != package:
                        found.append(f"{source}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    bound[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _private(node.attr)
            and package_of(bound[node.value.id], modules) != package
        ):
            found.append(f"{bound[node.value.id]}.{node.attr}")
    return found


def test_the_private_name_check_sees_both_forms(tmp_path):
    pkg = tmp_path / "ds_twophase"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    (pkg / "a" / "x.py").write_text("_hidden = 1\nshown = 2\n")
    (pkg / "b" / "y.py").write_text(
        "from ..a.x import _hidden, shown\nfrom ..a import x\nprint(x._hidden, x.shown)\n"
    )
    (pkg / "a" / "z.py").write_text("from .x import _hidden\n")  # same package: allowed
    modules = {
        "ds_twophase.a.x": pkg / "a" / "x.py",
        "ds_twophase.b.y": pkg / "b" / "y.py",
        "ds_twophase.a.z": pkg / "a" / "z.py",
    }
    assert private_imports_across_packages("ds_twophase.b.y", modules) == [
        "ds_twophase.a.x._hidden",
        "ds_twophase.a.x._hidden",
    ]
    assert private_imports_across_packages("ds_twophase.a.z", modules) == []


def test_no_module_takes_private_names_from_another_package():
    offenders = {n: f for n in MODULES if (f := private_imports_across_packages(n))}
    assert offenders == {}


def test_the_probe_measures_and_the_schedule_decides():
    """probe/ holds no decision: none of its modules imports the epoch-end decision, which
    lives with the schedule; the old import paths still give the same objects."""
    import ds_twophase
    from ds_twophase import probe
    from ds_twophase.schedulers import end_of_epoch

    deciders = [
        n
        for n in MODULES
        if n.startswith("ds_twophase.probe") and "end_of_epoch" in str(imports_of(n))
    ]
    assert deciders == []
    assert "ds_twophase.probe.epoch_end" not in MODULES
    for name in probe.DECISION_NAMES:
        assert getattr(probe, name) is getattr(end_of_epoch, name)
    assert ds_twophase.epoch_end is end_of_epoch.epoch_end
    assert ds_twophase.HessianProbe is probe.HessianProbe
    for name in ds_twophase.__all__:
        assert getattr(ds_twophase, name) is not None


def test_the_trainer_package_surface_loads_on_first_use():
    """Every public name of ds_twophase.trainer resolves; the own-loop checkpoints, which share
    trainer/checkpoint.py's format, do not build the trainer (data sets, models) to get it."""
    import ds_twophase.trainer as trainer

    assert all(getattr(trainer, name) is not None for name in trainer.__all__)
    code = "import sys, ds_twophase.loop_checkpoint; print('ds_twophase.trainer.trainer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
