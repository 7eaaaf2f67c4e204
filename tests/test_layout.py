"""The code layout rules (README "How the code is laid out"), checked on the source: the library never imports a
command-line module or a script, mass_objective/ is not imported back by what it imports, no function is longer
than 80 lines (flag tables excepted), and the console entry points name real functions."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tools. s2s_ft/cli.py (the flags and error reporting they share) imports only library modules, so the small
# `python -m` mains of library modules (plotting, minilm) may use it.
CLI_MODULES = {"s2s_ft.train", "s2s_ft.decode", "s2s_ft.evaluate", "s2s_ft.serve"}
SCRIPTS = {"run_seq2seq", "decode_seq2seq"}
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
LIBRARY = {name: path for name, path in ALL.items() if name not in CLI_MODULES}


@pytest.mark.parametrize("module", sorted(LIBRARY))
def test_the_library_imports_no_tool_and_no_script(module):
    imported = imports(module, LIBRARY[module])
    assert not imported & (CLI_MODULES | SCRIPTS), sorted(imported & (CLI_MODULES | SCRIPTS))


def test_mass_objective_is_not_imported_back_by_what_it_imports():
    seen, todo = set(), [name for name in ALL if name.startswith("mass_objective")]
    while todo:  # everything mass_objective imports, transitively, within this repository
        name = todo.pop()
        for target in imports(name, ALL[name]):
            if target in ALL and target not in seen and not target.startswith("mass_objective"):
                seen.add(target)
                todo.append(target)
    assert "s2s_ft.packing" in seen  # the check looks where it should
    for name in seen:
        assert not any(t.startswith("mass_objective") for t in imports(name, ALL[name])), name


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
    for target in points.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.slow
@pytest.mark.parametrize("command", [["-m", "s2s_ft.train"], ["-m", "s2s_ft.decode"], ["-m", "s2s_ft.evaluate"],
                                     ["-m", "s2s_ft.serve"], ["run_seq2seq.py"], ["decode_seq2seq.py"]])
def test_every_tool_runs_as_a_module_and_as_a_script(command):
    result = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--log_level" in result.stdout, result.stderr


def test_the_same_thing_has_the_same_flag_name_in_every_tool():
    from s2s_ft import decode, evaluate, serve, train

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
    from s2s_ft.cli import SEARCH_FLAGS
    for name in SEARCH_FLAGS:
        assert serve_flags[name] == decode_flags[name], name
        assert serve.build_parser().get_default(name) == decode.build_parser().get_default(name), name
    assert serve_flags["device"] == decode_flags["device"] and serve_flags["quantize"] == decode_flags["quantize"]


def test_no_committed_file_carries_a_path_of_the_machine_it_ran_on():
    """Records and scripts name data, runs and packages relatively (../shared/data, WORK/, SITE_PACKAGES/), so that they
    read and run the same from any clone."""
    import subprocess
    machine = ("/" + "work/", "/" + "root/")  # spelled apart so that this file does not match itself
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        path = os.path.join(ROOT, name)
        if name.endswith((".gz", ".png", ".safetensors")) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="ignore") as handle:
            text = handle.read()
        offenders += [f"{name}: {marker}" for marker in machine if marker in text]
    assert not offenders, offenders
