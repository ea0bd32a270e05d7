"""The package as others install it: no POSIX-only import when any module loads (so the entry points start on
Windows), torch as a lower bound with the tested version in constraints.txt, the metadata a package index shows."""

import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT

# Modules that exist on POSIX systems only (the standard library's "Availability: Unix" ones).
POSIX_ONLY = [
    "fcntl",
    "resource",
    "termios",
    "tty",
    "pty",
    "pwd",
    "grp",
    "posix",
    "syslog",
    "crypt",
    "nis",
    "spwd",
    "readline",
    "curses",
]

# Imports every module of the package and its Hydra plugins, refusing a POSIX-only module when the import comes
# from one of ours (a library may import one on Linux and not on Windows: that is its business).
PROBE = r"""
import builtins, importlib, pkgutil, sys
POSIX_ONLY = set(sys.argv[1].split(","))
OURS = ("makemore_lab", "hydra_plugins.makemore_", "__main_entry__")
real_import = builtins.__import__

def watched_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    if level == 0 and name.split(".")[0] in POSIX_ONLY and importer.startswith(OURS):
        print(f"{importer} imports {name}", flush=True)
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = watched_import
import makemore_lab, hydra_plugins
modules = ["makemore_lab.cli", "makemore_lab.train", "makemore_lab.sample", "makemore_lab.evaluate"]
modules += [m.name for m in pkgutil.walk_packages(makemore_lab.__path__, "makemore_lab.")]
modules += [m.name for m in pkgutil.walk_packages(hydra_plugins.__path__, "hydra_plugins.")
            if m.name.startswith("hydra_plugins.makemore_")]
for module in modules:
    importlib.import_module(module)
for script in ("train.py", "sample.py", "eval.py"):
    code = compile(open(script).read(), script, "exec")
    exec(code, {"__name__": "__main_entry__", "__file__": script})  # defines main() without running it
print("imported", len(modules), flush=True)
"""


@pytest.mark.slow  # imports every module in a fresh interpreter (~12 s)
def test_no_module_imports_a_posix_only_module_when_it_loads():
    found = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(POSIX_ONLY)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert found.returncode == 0, found.stderr[-3000:]
    lines = found.stdout.splitlines()
    assert lines[-1].startswith("imported ") and int(lines[-1].split()[1]) > 40
    assert [line for line in lines if " imports " in line] == []


def test_torch_is_a_lower_bound_and_the_tested_version_a_constraint():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = [d for d in project["dependencies"] if d.replace(" ", "").startswith("torch")]
    assert len(torch) == 1 and ">=" in torch[0] and "==" not in torch[0]
    constraints = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    assert "torch==2.13.0" in constraints
    for place in ("README.md", ".ci/run"):  # the project's own installs take the constraint
        text = (ROOT / place).read_text()
        installs = [line for line in text.splitlines() if "pip install" in line and "-e" in line]
        assert installs and all("-c constraints.txt" in line for line in installs), place


def test_the_metadata_a_package_index_shows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["authors"] and project["urls"] and project["classifiers"]
    assert any(c.startswith("Operating System") for c in project["classifiers"])
