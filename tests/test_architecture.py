"""The floors of docs/architecture.md, read from every module's imports: the core imports
nothing else of ours, the services never import the apps."""

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
