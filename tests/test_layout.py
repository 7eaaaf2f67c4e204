"""The code layout rules (docs/layout.md), checked on the source: the subpackages depend on each other one way only
(model <- data <- decoding <- serving, training; nothing imports the command line), there are no import circles,
mass_objective/ is not imported back by the library, no library signature takes an argparse Namespace, no function
is longer than 80 lines (flag tables excepted), the console entry points name real functions, and no committed file
carries a path of the machine it ran on."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"run_seq2seq", "decode_seq2seq"}
# What each part may import besides itself: the architecture, as a table. Shared helpers (errors, fileio,
# distributed) sit below everything; distributed knows the packed batch it shards.
LAYERS = {
    "s2s_ft": set(),  # the package's __init__: the version check only
    "s2s_ft.errors": set(),
    "s2s_ft.fileio": set(),
    "s2s_ft.model": {"s2s_ft.errors", "s2s_ft.fileio"},
    "s2s_ft.data": {"s2s_ft.errors", "s2s_ft.fileio", "s2s_ft.model"},
    "s2s_ft.distributed": {"s2s_ft.data"},
    "s2s_ft.decoding": {"s2s_ft.errors", "s2s_ft.fileio", "s2s_ft.distributed", "s2s_ft.model", "s2s_ft.data"},
    "s2s_ft.evaluation": {"s2s_ft.errors", "s2s_ft.fileio", "s2s_ft.data"},
    "s2s_ft.training": {"s2s_ft.errors", "s2s_ft.fileio", "s2s_ft.distributed", "s2s_ft.model", "s2s_ft.data",
                        "s2s_ft.decoding", "s2s_ft.evaluation"},
    "s2s_ft.hf": {"s2s_ft.model", "s2s_ft.data", "s2s_ft.decoding"},
    "s2s_ft.serving": {"s2s_ft.errors", "s2s_ft.fileio", "s2s_ft.model", "s2s_ft.data", "s2s_ft.decoding"},
    "s2s_ft.cli": {"s2s_ft.errors", "s2s_ft.fileio", "s2s_ft.distributed", "s2s_ft.model", "s2s_ft.data",
                   "s2s_ft.decoding", "s2s_ft.evaluation", "s2s_ft.training", "s2s_ft.serving"},
    "mass_objective": {"s2s_ft.training"},
}
# ``python -m s2s_ft.train`` and its siblings: the tools' older module names, each a thin call of s2s_ft/cli/.
SHORT_ENTRY_POINTS = ("train", "decode", "serve", "evaluate")
LAYERS.update({f"s2s_ft.{name}": {"s2s_ft.cli"} for name in SHORT_ENTRY_POINTS})
MAX_FUNCTION_LINES = 80
FLAG_TABLES = {"build_parser"}  # one add_argument call per flag: a table, however long


def modules(package: str) -> dict[str, str]:
    """Dotted module name -> file path, for every module of ``package``."""
    found = {}
    for directory, _, names in os.walk(os.path.join(ROOT, package)):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imports(module: str, path: str) -> set[str]:
    """Modules ``path`` imports (absolute names; relative imports resolved; ``from . import x`` gives pkg.x)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


ALL = {**modules("s2s_ft"), **modules("mass_objective")}


def part(module: str) -> str:
    """The LAYERS entry ``module`` belongs to."""
    return max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len)


def internal_imports(module: str) -> set[str]:
    """The repository's modules that ``module`` imports (names resolved to modules, not to their attributes)."""
    found = set()
    for name in imports(module, ALL[module]):
        while name and name not in ALL:
            name = name.rpartition(".")[0]
        if name and name != module and name not in ("s2s_ft",):
            found.add(name)
    return found


@pytest.mark.parametrize("module", sorted(name for name in ALL if name != "s2s_ft"))
def test_each_part_imports_only_the_parts_below_it(module):
    own = part(module)
    wrong = {name for name in internal_imports(module) if part(name) != own and part(name) not in LAYERS[own]}
    assert not wrong, f"{module} ({own}) imports {sorted(wrong)}"
    assert not imports(module, ALL[module]) & SCRIPTS


def test_there_are_no_import_circles():
    graph = {name: internal_imports(name) - {name} for name in ALL}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                raise AssertionError(" -> ".join(path[path.index(target):] + [target]) if target in path
                                     else f"{name} -> {target}")
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_library_never_imports_mass_objective_back():
    assert not [name for name in ALL if not name.startswith("mass_objective")
                and any(t.startswith("mass_objective") for t in internal_imports(name))]


def test_no_library_signature_takes_an_argparse_namespace():
    """Flags are turned into typed values at the edge (s2s_ft/cli/); the library takes those."""
    offenders = []
    for name, path in sorted(ALL.items()):
        if part(name) == "s2s_ft.cli":
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                annotations = [a.annotation for a in node.args.args + node.args.kwonlyargs if a.annotation]
                if any("Namespace" in ast.unparse(a) for a in annotations + [node.returns] if a is not None):
                    offenders.append(f"{name}.{node.name}")
    assert not offenders, offenders


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, path in sorted(ALL.items()):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in FLAG_TABLES:
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


def entry_points() -> dict[str, str]:
    text = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    return dict(re.findall(r'"([\w-]+) = ([\w.:]+)"', text))


def test_console_entry_points_name_the_tools_main_functions():
    import importlib

    points = entry_points()
    assert set(points) == {"s2s-ft-train", "s2s-ft-decode", "s2s-ft-eval", "s2s-ft-serve"}
    assert all(target.startswith("s2s_ft.cli.") for target in points.values()), points
    for target in points.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.slow
@pytest.mark.parametrize("command", [["-m", f"s2s_ft.{prefix}{name}"] for prefix in ("cli.", "") for name in
                                     SHORT_ENTRY_POINTS] + [["run_seq2seq.py"], ["decode_seq2seq.py"]])
def test_every_tool_runs_as_a_module_and_as_a_script(command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--log_level" in result.stdout, result.stderr


def test_the_same_thing_has_the_same_flag_name_in_every_tool():
    from s2s_ft.cli import decode, evaluate, serve, train

    def spellings(parser) -> dict[str, set[str]]:
        """Every flag spelling per destination."""
        found: dict[str, set[str]] = {}
        for action in parser._actions:
            found.setdefault(action.dest, set()).update(action.option_strings)
        return found

    train_flags, decode_flags = spellings(train.build_parser()), spellings(decode.build_parser())
    serve_flags = spellings(serve.build_parser())
    assert "--max_tgt_length" in train_flags["max_target_seq_length"]  # decode's name, accepted by train
    assert "--max_target_seq_length" in decode_flags["max_tgt_length"]  # and train's name by decode
    for flags in (train_flags, decode_flags, serve_flags):
        assert {"--precision"} <= flags["precision"] and {"--fp16"} <= flags["fp16"]
        assert flags["detokenize"] == {"--detokenize"}
    for parser in (train.build_parser(), decode.build_parser(), evaluate.build_parser(), serve.build_parser()):
        assert parser.get_default("log_level") == "INFO"
    assert train.build_parser().get_default("precision") is decode.build_parser().get_default("precision") is None
    assert "--no_cuda" in decode_flags["device"] and "--no_cuda" in train_flags["no_cuda"]
    # the server's defaults for its requests are decode's search flags, spelled and defaulting alike
    from s2s_ft.cli.common import SEARCH_FLAGS
    for name in SEARCH_FLAGS:
        assert serve_flags[name] == decode_flags[name], name
        assert serve.build_parser().get_default(name) == decode.build_parser().get_default(name), name
    assert serve_flags["device"] == decode_flags["device"] and serve_flags["quantize"] == decode_flags["quantize"]


# An absolute path under the home, root, work or temporary folders; spelled apart so that this file does not match.
MACHINE_PATH = re.compile(r"(^|[^A-Za-z0-9_.])/(" + "|".join(["wo" + "rk", "ro" + "ot", "ho" + "me", "t" + "mp"])
                          + r")/[A-Za-z0-9_.-]+", re.M)


def machine_paths(root: str) -> list[str]:
    """``FILE: PATH`` for every machine path in the text files committed under ``root``."""
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = os.path.join(root, name)
        if name.endswith((".gz", ".png", ".safetensors")) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="ignore") as handle:
            found += [f"{name}: {match.group(0).strip()}" for match in MACHINE_PATH.finditer(handle.read())]
    return found


def test_no_committed_file_carries_a_path_of_the_machine_it_ran_on():
    """Records and scripts name data, runs and packages relatively (../shared/data, WORK/, SITE_PACKAGES/) or by a
    placeholder (WORK_DIR), so that they read and run the same from any clone."""
    assert not machine_paths(ROOT)


@pytest.mark.parametrize("text, found", [("--work_dir /tm" "p/mc_main", True), ("cd /ho" "me/ann/x", True),
                                         ("see /wo" "rk/shared", True), ("(/ro" "ot/.cache)", True),
                                         ("WORK_DIR/squad_qg", False), ("../shared/data", False),
                                         ("runs/tmp/x", False)])
def test_the_machine_path_rule_catches_what_it_should(text, found, tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "notes.md").write_text(text + "\n", encoding="utf-8")
    subprocess.run(["git", "add", "notes.md"], cwd=tmp_path, check=True)
    assert bool(machine_paths(str(tmp_path))) == found
