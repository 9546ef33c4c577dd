"""The house rules of the layout (docs/ARCHITECTURE.md, "House rules"), checked on the
source:

- no import cycle among the modules of virtdeb/, imports inside functions included;
- the declarations (triggers, settings and their debconf questions) are what
  debian/triggers and debian/templates declare;
- no module of virtdeb/ is over 450 lines; every Change kind is defined in
  virtdeb/effects/; the journal imports no rule; nothing but __main__ imports cli;
  no rule runs a command, writes a file or changes libvirt itself; no file is read
  but through fsio's reader;
- Editor.last and Editor.ensure, the helpers the rules share;
- no module of tests/ or bench/ imports another module's private (``_name``) names.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

import virtdeb
from virtdeb import maint
from virtdeb.config import schema
from virtdeb.debconf_answers import questions
from virtdeb.edit import Editor
from virtdeb.host import Host
from virtdeb.rules import load_all

TOP = Path(__file__).resolve().parent.parent
PACKAGE = Path(virtdeb.__file__).resolve().parent  # the source tree's, or the installed one
MAX_LINES = 450
source_tree = pytest.mark.skipif(not (TOP / "debian").is_dir(),
                                 reason="needs the source tree's debian/ (autopkgtest has none)")


def modules() -> dict[str, ast.Module]:
    return {f"virtdeb/{p.relative_to(PACKAGE)}": ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.Module) -> set[str]:
    """Every module a file imports, at any depth (``from a import b`` gives a and a.b)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def module_name(path: Path) -> str:
    """``virtdeb.cpu.fix`` of virtdeb/cpu/fix.py; ``virtdeb.cpu`` of its __init__.py."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(node: ast.Import | ast.ImportFrom, here: str, package: bool) -> list[str]:
    """The dotted names one import statement may load, relative imports resolved."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = here.split(".")
        keep = len(parts) - node.level + (1 if package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def import_graph() -> dict[str, set[str]]:
    """virtdeb module -> the virtdeb modules it imports, anywhere in the file (inside
    functions and ``if TYPE_CHECKING:`` too)."""
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(n for n in _imported_names(node, name, package) if n in paths)
        graph[name] = found - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first, three colours)."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt in stack:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_find_cycle_names_the_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("from . import fix\nfrom ..host import Host\n")
    nodes = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert _imported_names(nodes[0], "virtdeb.cpu.drift", False)[1] == "virtdeb.cpu.fix"
    assert _imported_names(nodes[1], "virtdeb.cpu", True)[0] == "virtdeb.host"


def test_no_import_cycle() -> None:
    """A cycle hides behind an import inside a function; break it with a leaf module
    (see docs/ARCHITECTURE.md) instead of moving the import."""
    graph = import_graph()
    assert "virtdeb.config" in graph and "virtdeb.host" in graph["virtdeb.journal"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# -- the declarations against debian/ --------------------------------------------------
@source_tree
def test_debian_triggers_are_the_rules_triggers() -> None:
    text = (TOP / "debian/triggers").read_text(encoding="utf-8")
    declared = {line.split()[1] for line in text.splitlines()
                if line.startswith(("interest ", "interest-noawait "))}
    assert declared == set(maint.triggers())
    assert all(rule.triggers == () or rule.postinst for rule in load_all().values())


def _templates() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in (TOP / "debian/templates").read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            if key == "Template":
                current = out.setdefault(value.strip(), {})
            current[key] = value.strip()
    return out


@source_tree
def test_debian_templates_are_the_declared_questions() -> None:
    templates = _templates()
    asked = questions()
    assert set(templates) == set(asked)
    for question, (dotted, setting) in asked.items():
        template = templates[question]
        kind = template["Type"]
        if setting.kind == "flag":
            assert kind == "boolean", question
            assert template.get("Default") == ("true" if setting.default == "yes" else "false")
        elif setting.kind == "choice":
            assert kind == "select", question
            assert template["Choices"].split(", ") == list(setting.allowed), question
            assert template.get("Default") == setting.default, question
        elif setting.allowed:
            assert kind == "multiselect", question
            assert template["Choices"].split(", ") == list(setting.allowed), question
        else:
            assert kind == "string", question
        assert dotted.split(".")[1] in schema()[dotted.split(".")[0]]


@source_tree
def test_debian_config_reads_back_and_asks_every_question() -> None:
    """debian/config (sh: it runs before python3 may exist) puts each declared setting's
    value from virtdeb.conf into its question, then asks it."""
    text = (TOP / "debian/config").read_text(encoding="utf-8")
    for question, (dotted, _setting) in questions().items():
        section, key = dotted.split(".")
        assert re.search(rf"(conf|file)_get {section} {key}\b", text), dotted
        assert re.search(rf"db_set {re.escape(question)}\b", text), question
        assert re.search(rf"db_input \w+ {re.escape(question)}\b", text), question


def test_postinst_and_trigger_rules_come_from_the_rules() -> None:
    assert maint.configure_rules() == [n for n, r in load_all().items() if r.postinst]
    assert "debug" not in maint.configure_rules()
    assert maint.rules_for_triggers(["/usr/lib/firmware/amd-ucode/x /bin/nc.openbsd"]) == \
        ["cpu", "ssh"]


# -- the layout -----------------------------------------------------------------------
def test_no_module_is_over_450_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_every_change_kind_is_in_effects() -> None:
    outside = []
    for path, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith("Change")
                    for b in node.bases) and not path.startswith("virtdeb/effects/"):
                outside.append(f"{path}: {node.name}")
    assert outside == []


def test_the_journal_imports_every_effect() -> None:
    """revert finds a record's kind only if its module was imported: the journal imports
    every module of effects/ itself."""
    kinds = {f"virtdeb.effects.{p.stem}" for p in (PACKAGE / "effects").glob("*.py")
             if p.stem != "__init__"}
    assert kinds and kinds <= imported(modules()["virtdeb/journal.py"])


def test_the_journal_imports_no_rule_and_only_main_imports_cli() -> None:
    trees = modules()
    assert not [m for m in imported(trees["virtdeb/journal.py"]) if m.startswith("virtdeb.rules")]
    importers = [p for p, t in trees.items() if {"virtdeb.cli", "virtdeb.cli.main"} & imported(t)
                 or "cli" in {a.name for n in ast.walk(t) if isinstance(n, ast.ImportFrom)
                              and n.module == "virtdeb" for a in n.names}]
    assert importers == ["virtdeb/__main__.py"]


# What a rule must not call: commands, writes, libvirt's changing calls.
FORBIDDEN_IN_RULES = re.compile(
    r"\bsubprocess\b|\.run\(|atomic_write|fsio\.remove|os\.(unlink|remove|chmod|chown|rename"
    r"|setxattr|removexattr|mkdir)\b|\.(defineXML|networkDefineXML|create|undefine|destroy"
    r"|setAutostart)\(")


def test_no_rule_runs_writes_or_changes_libvirt() -> None:
    found = []
    for path in sorted((PACKAGE / "rules").glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if FORBIDDEN_IN_RULES.search(code):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert found == []


def test_no_read_but_through_the_reader() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "fsio.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"(?<!fsio)\.read_(bytes|text)\(|\bopen\([^)]*\)\s*as\b", line):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert found == []


# -- the Editor's shared helpers ------------------------------------------------------
def test_editor_last_and_ensure(tmp_path: Path) -> None:
    conf = tmp_path / "etc/libvirt/libvirtd.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text('log_level = 1\n#log_filters = "x"\nlog_level = 3\n')
    host = Host(root=tmp_path)
    with Editor(host, "/etc/libvirt/libvirtd.conf", "Libvirtd.lns") as ed:
        assert ed.last("log_level") == "3"  # the last one wins, as in libvirt
        assert ed.last("log_filters") is None
        ed.ensure("log_level", "2")  # every occurrence: a duplicate must not undo it
        ed.ensure("log_outputs", "1:stderr", after="#comment")
        ed.ensure("log_filters", "1:qemu")
    assert ed.change is not None and ed.change.after == (
        b'log_level = 2\n#log_filters = "x"\nlog_outputs = "1:stderr"\nlog_level = 2\n'
        b'log_filters = "1:qemu"\n')


def test_one_path_applies_changes() -> None:
    """Every change is made by virtdeb.outcome.apply (one journal entry under the lock);
    no engine or command calls the journal's apply itself."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("outcome.py", "journal.py"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"Journal\([^)]*\)\.apply\(|\bjournal\.apply\(", line):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert found == []


@source_tree
def test_pointers_stay_in_the_tree() -> None:
    """README.md and this file point to docs/ARCHITECTURE.md; no tracked file cites a
    document outside the tree or an issue number a reader cannot look up."""
    assert (TOP / "docs/ARCHITECTURE.md").is_file()
    assert "docs/ARCHITECTURE.md" in (TOP / "README.md").read_text(encoding="utf-8")
    assert "docs/ARCHITECTURE.md" in (__doc__ or "")
    outside = re.compile("DESIGN" + r"\.md|\bissues? #?\d+|\(#\d+\)", re.I)
    found = []
    for path in source_files():
        text = path.read_bytes().decode("utf-8", "replace")
        found += [f"{path.relative_to(TOP)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                  if outside.search(line)]
    assert found == []


def source_files() -> list[Path]:
    """The tree's files: no hidden or build directory, no symlink followed."""
    out = []
    for top, dirs, files in os.walk(TOP):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__"))
                         and d != "build")
        out += [Path(top, f) for f in sorted(files) if not f.endswith((".pyc", ".deb"))]
    return out


# -- the test harness and the benchmarks ----------------------------------------------
def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def tree_module(dotted: str, importer: Path) -> Path | None:
    """The file of module or package DOTTED if it is one of the tree's (virtdeb/, tests/,
    bench/, or a sibling of IMPORTER, as bench's common), else None (the standard library,
    a Debian module)."""
    bases = [PACKAGE.parent] if dotted.split(".")[0] == "virtdeb" else [TOP, importer.parent]
    for base in bases:
        path = base.joinpath(*dotted.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def private_imports(source: str, path: Path) -> list[str]:
    """Where the module PATH (its SOURCE) takes another module's private name: ``from M
    import _name``, or ``m._name`` on a module of the tree it imported. Each as
    ``file:line: what``."""
    tree = ast.parse(source)
    here = ".".join(path.relative_to(TOP).with_suffix("").parts)
    where = path.relative_to(TOP)
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> the tree module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    modules[a.asname] = a.name
                else:
                    modules[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")[:-node.level]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            if tree_module(base, path) is None:
                continue
            for a in node.names:
                if _is_private(a.name):
                    found.append(f"{where}:{node.lineno}: from {base} import {a.name}")
                elif tree_module(f"{base}.{a.name}", path) is not None:
                    modules[a.asname or a.name] = f"{base}.{a.name}"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        chain: list[str] = []
        value: ast.expr = node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in modules:
            continue
        dotted = ".".join([modules[value.id], *chain])
        if tree_module(dotted, path) is not None:
            found.append(f"{where}:{node.lineno}: {dotted}.{node.attr}")
    return sorted(set(found), key=lambda f: (f.split(":")[0], int(f.split(":")[1])))


def test_private_imports_are_named() -> None:
    sample = TOP / "tests/sample.py"
    source = """import os
import tests.harness.procs
import tests.harness.procs as pr
from tests.harness import procs
from tests.harness.procs import PATH, _live_pids
from virtdeb import fsio
from .harness.procs import _pid_alive

os._exit(0)
procs._pid_alive(1)
pr._live_pids("x")
tests.harness.procs._pid_alive(2)
fsio._private
procs.PATH
PATH._not_a_module
"""
    assert private_imports(source, sample) == [
        "tests/sample.py:5: from tests.harness.procs import _live_pids",
        "tests/sample.py:7: from tests.harness.procs import _pid_alive",
        "tests/sample.py:10: tests.harness.procs._pid_alive",
        "tests/sample.py:11: tests.harness.procs._live_pids",
        "tests/sample.py:12: tests.harness.procs._pid_alive",
        "tests/sample.py:13: virtdeb.fsio._private",
    ]


@pytest.mark.integration  # bench/ is in the source tree only (not in autopkgtest's copy)
def test_private_imports_finds_bench_siblings() -> None:
    assert private_imports("from common import _x\n", TOP / "bench/sample.py") == \
        ["bench/sample.py:1: from common import _x"]


def test_no_module_of_tests_or_bench_imports_anothers_private_names() -> None:
    """A name another module uses is public (no leading underscore): tests/harness/ is
    split by job (procs, chroot, libvirtd, plugin, ...) and each says what it offers."""
    found = []
    for top in ("tests", "bench"):
        for path in sorted((TOP / top).rglob("*.py")):
            found += private_imports(path.read_text(encoding="utf-8"), path)
    assert not found, "another module's private names:\n" + "\n".join(found)
