"""The package's layout holds: data flows one way, from the shared options and errors through decoding and
inference to records, batch runs and the front ends. Every import in the package (also those inside functions,
which are imports all the same) is read with ast; an import of a higher layer, a front end reaching into another,
or a cycle fails here, naming the edge."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "audiotag"

# Lowest first. A module may import its own layer and those below; front ends never each other (below).
LAYERS = [
    # the root holds __version__ and lazy public names only (no static import)
    ("audiotag", "audiotag.errors", "audiotag.hashing"),
    ("audiotag.options", "audiotag.assets"),
    ("audiotag.decode",),
    ("audiotag.infer",),
    ("audiotag.records",),
    ("audiotag.batch",),
    ("audiotag.cli", "audiotag.serve", "audiotag.distributed", "audiotag.__main__"),
]
FRONT_ENDS = ("audiotag.cli", "audiotag.serve", "audiotag.distributed")
# `audiotag serve` is a subcommand of the command line: cli dispatches to serve's main, and nothing else.
ALLOWED_ACROSS = {("audiotag.cli", "audiotag.serve")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known) -> set:
    """The package's modules that ``name`` imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "audiotag")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "audiotag":
                continue
            for alias in node.names:  # `from audiotag.infer import tagger` imports the module audiotag.infer.tagger
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    found.discard(name)
    return found


def graph() -> dict:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(name: str) -> int:
    best = None
    for number, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (number, len(prefix))
    assert best is not None, f"{name} is in no layer: add it to LAYERS in {__file__}"
    return best[0]


def front_end(name: str):
    return next((f for f in FRONT_ENDS if name == f or name.startswith(f + ".")), None)


def upward_edges(edges: dict) -> list:
    wrong = []
    for source, targets in edges.items():
        for target in sorted(targets):
            if layer(target) > layer(source):
                wrong.append(f"{source} -> {target} (layer {layer(source)} imports layer {layer(target)})")
            ends = (front_end(source), front_end(target))
            if None not in ends and ends[0] != ends[1] and ends not in ALLOWED_ACROSS:
                wrong.append(f"{source} -> {target} (one front end reaching into another)")
    return wrong


def cycles(edges: dict) -> list:
    """Each cycle once, as the path that closes it."""
    found, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                found.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_every_module_sits_in_a_layer():
    for name in modules():
        layer(name)


def test_no_import_goes_up_or_across():
    assert upward_edges(graph()) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


@pytest.mark.parametrize("edges, expected", [
    ({"audiotag.decode.stream": {"audiotag.infer.tagger"}}, "audiotag.decode.stream -> audiotag.infer.tagger"),
    ({"audiotag.distributed": {"audiotag.cli"}}, "one front end reaching into another"),
])
def test_the_checks_see_a_bad_edge(edges, expected):
    """The checks themselves: an upward edge and a front end's reach are reported (so the tests above can fail)."""
    assert any(expected in line for line in upward_edges(edges))


def test_the_cycle_check_sees_a_cycle():
    edges = {"audiotag.decode": {"audiotag.decode.ffmpeg"}, "audiotag.decode.ffmpeg": {"audiotag.decode"}}
    assert cycles(edges) == ["audiotag.decode -> audiotag.decode.ffmpeg -> audiotag.decode"]


def test_the_walk_reads_imports_inside_functions():
    """The old cycle was function-level: audio.py imported ffmpeg inside three functions."""
    edges = graph()
    assert "audiotag.infer.model" in edges["audiotag.cli.tag"]  # imported inside run only
    assert "audiotag.decode.ffmpeg" in edges["audiotag.decode"]
