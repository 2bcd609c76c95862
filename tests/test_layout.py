"""The package's shape is what docs/design.md says: every module listed in its layout, every
folder importing only folders below it, no import cycle, and imports at the top of modules
except the documented lazy ones."""

import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ncl_jax"
# The layers, bottom to top (docs/design.md, "Layout"): a module may import its own folder and
# any folder of a lower layer. The top-level programs sit above everything.
LAYERS = (
    ("errors",),
    ("cli", "models", "data"),
    ("core",),
    ("config",),
    ("evaluation",),
    ("training",),
    ("analysis", "deploy", "perf"),
)
# Imports that may sit inside functions: heavy optional dependencies that must stay unloaded.
LAZY = re.compile(
    r"^(tensorflow|tensorflow_datasets|tensorboard|matplotlib|torch|clu)\b"
    r"|^ncl_jax\.data\.(datasets|sources|augment)$"
)


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _place(path: pathlib.Path) -> str:
    """The layer name of a module: its folder, or its own name for top-level modules."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _rank(place: str) -> int:
    for rank, names in enumerate(LAYERS):
        if place in names:
            return rank
    return len(LAYERS)  # a program


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ncl_jax"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            yield node, names
        elif isinstance(node, ast.Import):
            yield node, [a.name for a in node.names]


def test_design_layout_lists_exactly_the_package_modules():
    design = (REPO / "docs" / "design.md").read_text()
    layout = design.split("## Layout", 1)[1].split("```", 2)[1]
    documented = set(re.findall(r"^(ncl_jax/\S+\.py)", layout, flags=re.M))
    actual = {str(p.relative_to(REPO)) for p in _modules() if p.name != "__init__.py"}
    assert documented == actual, (
        f"in the tree, not in docs/design.md: {sorted(actual - documented)}; "
        f"in docs/design.md, not in the tree: {sorted(documented - actual)}"
    )


def test_every_folder_imports_only_its_own_and_lower_layers():
    wrong = []
    for path in _modules():
        place, tree = _place(path), ast.parse(path.read_text())
        for _, names in _imports(tree):
            for name in names:
                parts = name.split(".")
                if parts[0] != "ncl_jax" or len(parts) < 2:
                    continue
                target = parts[1]
                if not (PACKAGE / target).is_dir() and not (PACKAGE / f"{target}.py").exists():
                    continue  # a name imported from the package itself, e.g. __version__
                if target != place and _rank(target) >= _rank(place):
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, wrong


def test_imports_sit_at_the_top_except_the_documented_lazy_ones():
    inside = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    names = [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                if not all(LAZY.search(n) for n in names):
                    inside.append(f"{path.relative_to(REPO)}:{node.lineno}")
                    continue
                lines = path.read_text().splitlines()[max(0, node.lineno - 3) : node.lineno]
                if not any("lazy" in line for line in lines):  # the comment that says why
                    inside.append(f"{path.relative_to(REPO)}:{node.lineno} (no comment)")
    assert not inside, inside
