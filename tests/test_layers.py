"""Each layer imports only what it may: HTTP, caches and FUSE each live in one module."""

import ast
from pathlib import Path

import desfs

PACKAGE = Path(desfs.__file__).parent

# third-party library → the only module allowed to import it
OWNERS = {"requests": {"client"}, "urllib3": {"client"}, "cachetools": {"cache"}, "mfusepy": {"fuse_ops"},
          "fuse": set()}  # fusepy's module: not used any more
# module → desfs modules it must not import (it would cross a layer)
FORBIDDEN = {
    "errors": {"listing", "client", "cache", "tree", "fuse_ops", "cli", "mounting", "server", "sample"},
    "listing": {"client", "cache", "tree", "fuse_ops", "cli", "server"},
    "cache": {"client", "listing", "tree", "fuse_ops", "cli", "server", "errors"},
    "client": {"cache", "tree", "fuse_ops", "cli", "server"},
    "tree": {"fuse_ops", "cli", "server"},
    "fuse_ops": {"client", "cli", "server"},
    "server": {"client", "cache", "tree", "fuse_ops", "cli", "listing"},
}


def imports_of(module: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_import_direction():
    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        name = path.stem
        for imported in imports_of(path):
            top = imported.split(".")[0]
            if top in OWNERS and name not in OWNERS[top]:
                problems.append(f"{name} imports {top}")
            if top == "desfs" and "." in imported and imported.split(".")[1] in FORBIDDEN.get(name, ()):
                problems.append(f"{name} imports {imported}")
    assert problems == []


def test_every_module_names_its_layer():
    for path in PACKAGE.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.name} has no module docstring"
