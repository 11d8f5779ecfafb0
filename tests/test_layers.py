"""Each layer imports only what it may: HTTP, caches and FUSE each live in one module.

The layer table is the README's ("For developers", between its `layers` markers): every module
of the package with the desfs modules it may import. This test reads it (ALLOWED), so the table
and the check are one list: a new module, or a new import across layers, fails here until the
README's table says where it belongs, and a table entry the module no longer imports fails too.
Imports are read from the source with ast, in every form: `import desfs.x`,
`from desfs.x import y`, `from desfs import x`, relative imports (`from . import x`,
`from .x import y`), imports inside functions, and
`importlib.import_module("...")` / `__import__("...")` with a literal name.
"""

import ast
from pathlib import Path

import pytest

import desfs
from conftest import parse_python

PACKAGE = Path(desfs.__file__).parent
README = PACKAGE.parent / "README.md"


def module_name(path: Path) -> str:
    """'tree' for desfs/tree.py, 'cli.mount' for desfs/cli/mount.py, 'cli' for desfs/cli/__init__.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


PATHS = {module_name(p): p for p in PACKAGE.rglob("*.py")}
MODULES = set(PATHS)

# third-party library → the only modules allowed to import it
OWNERS = {"requests": {"client"}, "urllib3": {"client"}, "cachetools": {"cache"}, "mfusepy": {"fuse_ops"},
          "fuse": set()}  # fusepy's module: not used any more


def layer_table() -> dict[str, set[str]]:
    """The README's layer table (between its `layers` markers): module → the desfs modules it may import."""
    text = README.read_text()
    table = text[text.index("<!-- layers: begin -->"):text.index("<!-- layers: end -->")]
    allowed = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        path = cells[0].strip("`")
        name = module_name(PACKAGE / path)
        may = {m.strip().strip("`") for m in cells[2].split(",")} - {"—", ""}
        allowed[name] = may
    return allowed


ALLOWED = layer_table()


def imports_of(source: str, base: str = "desfs") -> set[str]:
    """Every module the source of a desfs module imports, as dotted names: a desfs module as
    "desfs.<name>" ("desfs.cli.mount"), the package itself as "desfs.__init__". `base` is the
    package the module is in, for relative imports."""
    names: set[str] = set()

    def member(package: str, name: str) -> str:
        dotted = f"{package}.{name}"[len("desfs."):]
        return f"desfs.{dotted}" if dotted in MODULES else f"{package}.__init__"

    for node in ast.walk(parse_python(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the package
                package = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                if node.module:
                    names.add(f"{package}.{node.module}")
                else:
                    names |= {member(package, a.name) for a in node.names}
            elif node.module and (node.module == "desfs" or node.module.startswith("desfs.")) \
                    and node.module[len("desfs."):] not in MODULES - {"cli"}:
                names |= {member(node.module, a.name) for a in node.names}
            elif node.module:
                names.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


def target_of(imported: str) -> str | None:
    """The desfs module an imported dotted name is (the longest that is one), or None if not desfs."""
    parts = imported.split(".")
    if parts[0] != "desfs":
        return None
    for k in range(len(parts), 1, -1):
        name = ".".join(parts[1:k])
        if name in MODULES or name == "__init__":
            return name
    return "__init__"


def layer_problems(name: str, source: str) -> list[str]:
    problems = []
    if name not in ALLOWED:
        return [f"{name} is in no layer: add it to the README's layer table"]
    base = "desfs." + name if PATHS.get(name, Path()).name == "__init__.py" and name != "__init__" else \
        "desfs." + name.rpartition(".")[0] if "." in name else "desfs"
    for imported in imports_of(source, base.rstrip(".")):
        top = imported.split(".")[0]
        if top in OWNERS and name not in OWNERS[top]:
            problems.append(f"{name} imports {top}")
        target = target_of(imported)
        if target is not None and target != name and target not in ALLOWED[name]:
            problems.append(f"{name} imports desfs.{target}")
    return problems


def test_import_direction():
    problems = []
    for name, path in sorted(PATHS.items()):
        problems += layer_problems(name, path.read_text())
    assert problems == []


def test_every_module_is_in_the_readme_table_and_only_those():
    assert MODULES == set(ALLOWED)
    assert all(may <= MODULES | {"__init__"} for may in ALLOWED.values()), ALLOWED


def test_the_table_says_what_is_imported_not_more():
    """Each 'may import' of the table is an import the module has: the table is the layout, not a wish."""
    loose = {}
    for name, path in PATHS.items():
        base = "desfs." + name if path.name == "__init__.py" and name != "__init__" else \
            "desfs." + name.rpartition(".")[0] if "." in name else "desfs"
        used = {target_of(i) for i in imports_of(path.read_text(), base.rstrip("."))} - {None, name}
        if ALLOWED[name] - used:
            loose[name] = ALLOWED[name] - used
    assert loose == {}


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
    for path in PACKAGE.rglob("*.py"):
        doc = ast.get_docstring(parse_python(path.read_text()))
        assert doc, f"{path.name} has no module docstring"
