"""The floors of docs/architecture.md, read from every module's imports: the core imports
nothing else of ours, the services never import the apps, no import circle, no private name
across packages."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = "osteotel"
SERVICES = ("devices", "dsp", "ingest", "alerts")
APPS = "apps"
OURS = (CORE, *SERVICES, APPS)


def _imports(path: Path) -> set[str]:
    """The top-level packages of ours a module imports (anywhere in it, lazily too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(OURS)
    return found


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_every_package_has_modules() -> None:
    """The floors name real packages (a rename would make the checks below vacuous)."""
    assert all(_modules(package) for package in OURS)


@pytest.mark.parametrize("path", _modules(CORE), ids=lambda p: str(p.relative_to(REPO)))
def test_the_core_imports_nothing_else_of_ours(path: Path) -> None:
    """A core module imports only the core."""
    assert _imports(path) <= {CORE}


@pytest.mark.parametrize(
    "path",
    [path for package in SERVICES for path in _modules(package)],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_no_service_imports_the_apps(path: Path) -> None:
    """A service module never imports the apps floor."""
    assert APPS not in _imports(path)


@pytest.mark.parametrize("path", _modules("dsp"), ids=lambda p: str(p.relative_to(REPO)))
def test_dsp_imports_nothing_else_of_ours(path: Path) -> None:
    """The DSP core imports only itself (docs/dsp.md)."""
    assert _imports(path) <= {"dsp"}


def test_every_cited_doc_is_in_the_repository() -> None:
    """Every docs/*.md that code or docs cite exists here (no citation leaves the repository)."""
    cited: dict[str, str] = {}
    sources = [*REPO.glob("*.md"), *(REPO / "docs").rglob("*.md")]
    for package in OURS:
        sources += _modules(package)
    sources += sorted((REPO / "tests").glob("*.py"))
    for path in sources:
        for name in re.findall(r"\bdocs/[\w/-]+\.md\b", path.read_text()):
            cited.setdefault(name, str(path.relative_to(REPO)))
    assert cited
    missing = {name: where for name, where in cited.items() if not (REPO / name).is_file()}
    assert missing == {}
    assert "docs/domain.md" in cited


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for package in OURS for path in _modules(package)}


def _edges(name: str) -> set[str]:
    """The modules of ours a module imports, resolving `from a import b` to a.b when b is one."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {module for module in found if module in MODULES and module != name}


def test_no_import_circle() -> None:
    """No module reaches itself through the imports of ours (a package's own __init__, which
    only re-exports its modules, is left out as a target: Python loads it first anyway)."""
    graph = {
        name: {module for module in _edges(name) if MODULES[module].name != "__init__.py"}
        for name in MODULES
    }
    done: set[str] = set()
    circles = []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            circles.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        for module in sorted(graph[name]):
            visit(module, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert circles == []


# The kernel bench times dsp's numba kernels themselves against their plain references.
KERNEL_BENCH = ("apps.bench.dsp", "dsp._kernels")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_across_modules(name: str) -> None:
    """A module imports no private name of another package; a package's private module
    (dsp._kernels, osteotel._floatfmt_kernels) and its names serve only that package."""
    package = name.split(".", maxsplit=1)[0]
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
            continue
        for alias in node.names:
            target = f"{node.module}.{alias.name}"
            private = _private(alias.name) or any(map(_private, node.module.split(".")))
            if private and (name, target) != KERNEL_BENCH:
                assert target.split(".", maxsplit=1)[0] == package, f"{name} imports {target}"
                assert any(map(_private, target.split(".")[1:-1])) or target in MODULES, (
                    f"{name} imports {target}"
                )
