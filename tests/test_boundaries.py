"""The design's boundaries, enforced: domain services never import web or RPC frameworks or
the storage engine; the agent never imports the controller; tunnel/ never imports gRPC; only
the store imports rocksdict."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(*globs: str) -> list[Path]:
    return [p for g in globs for p in ROOT.glob(g) if "_pb2" not in p.name]


def test_domain_services_import_no_frameworks() -> None:
    banned = {"aiohttp", "grpc", "rocksdict", "libcloud"}
    files = _files("controller/*/service.py", "controller/*/model.py", "controller/events/*.py",
                   "controller/audit/chain.py", "controller/listing.py", "controller/errors.py")
    files = [f for f in files if f.name != "routes.py"]
    assert files
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f) & banned) for f in files if _imports(f) & banned}
    assert not bad, f"domain modules import frameworks: {bad}"


def test_only_the_store_imports_rocksdict() -> None:
    bad = [str(f.relative_to(ROOT)) for f in _files("controller/**/*.py", "agent/**/*.py")
           if "rocksdict" in _imports(f) and "controller/store/" not in str(f)]
    assert not bad


def test_agent_and_tunnel_stay_independent() -> None:
    bad = [str(f.relative_to(ROOT)) for f in _files("agent/**/*.py") if "controller" in _imports(f)]
    bad += [str(f.relative_to(ROOT)) for f in _files("tunnel/**/*.py") if _imports(f) & {"grpc", "controller"}]
    assert not bad


def test_cli_starts_without_controller_extras() -> None:
    """`overcast` must run in an agent-only install: its modules import, at load time, only
    the standard library and the agent's dependencies."""
    import sys

    # the standard library, the agent's dependencies, and our own packages
    allowed = set(sys.stdlib_module_names) | {"controller", "overcast", "grpc", "google", "psutil"}
    for f in _files("controller/cli/*.py"):
        tree = ast.parse(f.read_text())
        top = set()
        for node in tree.body:  # module level only: commands import the rest when called
            if isinstance(node, ast.Import):
                top.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top.add(node.module.split(".")[0])
                if node.module.startswith("controller.") and not node.module.startswith("controller.cli"):
                    raise AssertionError(f"{f.name} imports {node.module} at load time")
        assert top <= allowed, f"{f.name} imports {sorted(top - allowed)} at load time"
