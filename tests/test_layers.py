"""Each layer imports only what it may: HTTP, caches and FUSE each live in one module.

Every module of the package is listed in ALLOWED with the desfs modules it may import (the
README's layer table, "For developers"); a new module, or a new import across layers, fails
here until the table (and the README) says where it belongs. Imports are read from the source
with ast, in every form: `import desfs.x`, `from desfs.x import y`, `from desfs import x`,
relative imports (`from . import x`, `from .x import y`), imports inside functions, and
`importlib.import_module("...")` / `__import__("...")` with a literal name.
"""

import ast
from pathlib import Path

import pytest

import desfs

PACKAGE = Path(desfs.__file__).parent
MODULES = {p.stem for p in PACKAGE.glob("*.py")}

# third-party library → the only modules allowed to import it
OWNERS = {"requests": {"client"}, "urllib3": {"client"}, "cachetools": {"cache"}, "mfusepy": {"fuse_ops"},
          "fuse": set()}  # fusepy's module: not used any more

ANY = MODULES  # the command line wires the layers together
# module → the desfs modules it may import ("__init__" is the package itself: desfs.__version__)
ALLOWED = {
    "__init__": set(),
    "__main__": {"cli"},
    "errors": set(),  # knows everything else nothing of
    "listing": {"errors"},  # no HTTP, caches, FUSE
    "settings": set(),  # every default and option; knows no layer
    "client": {"__init__", "errors", "listing", "settings"},  # no caches, FUSE
    "cache": set(),  # no HTTP, FUSE
    "readahead": {"cache"},  # no HTTP, FUSE
    "tree": {"cache", "client", "errors", "listing", "readahead", "settings"},  # no FUSE, CLI
    "api": {"client", "errors"},  # no files, caches, FUSE
    "credentials": set(),  # no HTTP, FUSE
    "account": {"api", "cache", "client", "errors", "listing", "settings", "tree"},  # no FUSE; HTTP through Clients
    "download": {"errors", "listing", "tree"},  # no HTTP, FUSE
    "fuse_ops": {"listing", "tree"},  # no HTTP, caches
    "mounting": set(),  # no HTTP, FUSE callbacks
    "cli": ANY,
    "cli_get": ANY,
    "cli_account": ANY,
    "server": set(),  # the demo's and the tests' server knows nothing of the client
    "sample": set(),
}


def imports_of(source: str) -> set[str]:
    """Every module the source of a desfs module imports, as dotted names;
    a desfs module as "desfs.<name>", the package itself as "desfs.__init__"."""
    names: set[str] = set()

    def package_member(base: str, member: str) -> str:
        return f"{base}.{member}" if member in MODULES else f"{base}.__init__"

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the package (a module of it has no sub-packages)
                base = "desfs"
                if node.module:
                    names.add(f"{base}.{node.module}")
                else:
                    names |= {package_member(base, a.name) for a in node.names}
            elif node.module == "desfs":
                names |= {package_member("desfs", a.name) for a in node.names}
            elif node.module:
                names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


def layer_problems(name: str, source: str) -> list[str]:
    problems = []
    if name not in ALLOWED:
        return [f"{name} is in no layer: add it to ALLOWED (and to the README's layer table)"]
    for imported in imports_of(source):
        parts = imported.split(".")
        if parts[0] in OWNERS and name not in OWNERS[parts[0]]:
            problems.append(f"{name} imports {parts[0]}")
        if parts[0] == "desfs":
            target = parts[1] if len(parts) > 1 else "__init__"
            if target != name and target not in ALLOWED[name]:
                problems.append(f"{name} imports desfs.{target}")
    return problems


def test_import_direction():
    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        problems += layer_problems(path.stem, path.read_text())
    assert problems == []


def test_every_module_is_in_a_layer():
    assert MODULES == set(ALLOWED)


@pytest.mark.parametrize("source", [
    "import desfs.client",
    "import desfs.client as http",
    "from desfs.client import Client",
    "from desfs import client",
    "from desfs import errors, client",
    "from . import client",
    "from .client import Client",
    "def later():\n    from desfs.client import Client\n",
    "import importlib\nimportlib.import_module('desfs.client')",
    "__import__('desfs.client')",
    "import requests",
    "from requests.adapters import HTTPAdapter",
    "import urllib3.util",
])
def test_every_form_of_import_is_caught(source):
    assert layer_problems("listing", source), source  # listing may import errors only


def test_allowed_imports_pass():
    assert layer_problems("listing", "from desfs.errors import BadListing\nfrom . import errors\n"
                                     "from desfs import errors\nimport json") == []


def test_every_module_names_its_layer():
    for path in PACKAGE.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.name} has no module docstring"
