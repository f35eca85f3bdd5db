"""The engine is sans-IO: no trio, socket or time anywhere in rdsx/engine/."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import rdsx.engine

ENGINE_DIR = pathlib.Path(rdsx.engine.__file__).parent
FORBIDDEN = {"trio", "socket", "time", "select", "asyncio", "selectors"}


def test_engine_sources_import_no_io() -> None:
    for path in sorted(ENGINE_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_importing_the_engine_loads_no_io_module() -> None:
    # A stand-in parent package, so whatever rdsx/__init__.py imports (the trio node) is not
    # blamed on the engine: only rdsx.errors and rdsx.engine themselves execute.
    code = (
        "import sys, types; pkg = types.ModuleType('rdsx'); "
        f"pkg.__path__ = [{str(ENGINE_DIR.parent)!r}]; sys.modules['rdsx'] = pkg; "
        "before = set(sys.modules); import rdsx.engine; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    added = out.stdout.split()
    assert "rdsx.engine._connection" in added
    for name in added:
        assert name.split(".")[0] not in FORBIDDEN, name


def test_public_names_are_documented() -> None:
    for name in dir(rdsx.engine):
        if name.startswith("_"):
            continue
        obj = getattr(rdsx.engine, name)
        if isinstance(obj, type) or callable(obj):
            assert obj.__doc__, name
