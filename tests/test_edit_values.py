"""The Editor's values on python3-augeas 0.5.0 (bookworm) and 1.2.0 (trixie, sid) alike.

1.2.0 stores ``set(path, None)`` as "", which lenses refuse on write; 0.5.0 stores
no value.  These run with whichever python3-augeas the suite has (``make check``
runs them inside each suite's chroot) and with real lenses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.faults import CLEAN_ENV, TOP
from virtdeb.edit import Editor
from virtdeb.errors import ParseError
from virtdeb.host import Host

DROPIN = "/etc/dnsmasq.d/00_libvirtd.conf"
CONF = "/etc/virtdeb/virtdeb.conf"


def _host(tmp_path: Path, files: dict[str, str]) -> Host:
    root = tmp_path / "root"
    for path, text in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    root.mkdir(exist_ok=True)
    return Host(root=root)


def _after(ed: Editor) -> str:
    assert ed.change is not None
    return ed.change.after.decode()


def test_value_less_node_is_written_without_value(tmp_path: Path) -> None:
    host = _host(tmp_path, {DROPIN: "interface=lo\n"})
    with Editor(host, DROPIN, "Dnsmasq.lns") as ed:
        ed.set("bind-interfaces", None)
        assert ed.get("bind-interfaces") is None
        assert ed.match("bind-interfaces") == ["bind-interfaces"]
    assert _after(ed) == "interface=lo\nbind-interfaces\n"


def test_empty_value_is_no_value(tmp_path: Path) -> None:
    host = _host(tmp_path, {})
    with Editor(host, DROPIN, "Dnsmasq.lns") as ed:
        ed.set("bind-interfaces", "")
        ed.set("interface[last()+1]", "lo")
    assert _after(ed) == "bind-interfaces\ninterface=lo\n"


def test_existing_value_cleared_in_place_keeps_order(tmp_path: Path) -> None:
    host = _host(tmp_path, {CONF: "[virtdeb]\nallow_edit = qemu.conf\n[bridge]\nallow = br0\n"})
    with Editor(host, CONF, "Virtdebconf.lns") as ed:
        ed.set("virtdeb/allow_edit", None)
        assert ed.get("virtdeb/allow_edit") is None
        assert ed.get("bridge/allow") == "br0"
    after = _after(ed)
    assert after.splitlines()[0] == "[virtdeb]"
    assert after.splitlines()[1].startswith("allow_edit")
    assert "qemu.conf" not in after
    assert after.endswith("[bridge]\nallow = br0\n")


def test_value_less_node_keeps_its_children(tmp_path: Path) -> None:
    host = _host(tmp_path, {CONF: "[virtdeb]\nallow_edit = qemu.conf\n"})
    with Editor(host, CONF, "Virtdebconf.lns") as ed:
        before = ed.match("virtdeb/*")
        ed.set("virtdeb", None)
        assert ed.match("virtdeb/*") == before
        assert ed.get("virtdeb/allow_edit") == "qemu.conf"


def test_value_less_parsed_node_reads_as_none(tmp_path: Path) -> None:
    host = _host(tmp_path, {DROPIN: "bind-interfaces\n"})
    with Editor(host, DROPIN, "Dnsmasq.lns") as ed:
        assert ed.match("bind-interfaces") == ["bind-interfaces"]
        assert ed.values("bind-interfaces") == [None]
    assert ed.change is None


def test_parse_error_has_augeas_text(tmp_path: Path) -> None:
    host = _host(tmp_path, {CONF: "[virtdeb\nallow_edit = x\n"})
    with pytest.raises(ParseError) as info, Editor(host, CONF, "Virtdebconf.lns"):
        pass
    message = str(info.value)
    assert message.startswith(f"{CONF}:1:0: cannot parse with Virtdebconf.lns (parse_failed: ")
    assert "(error: error)" not in message


def test_write_error_has_augeas_text(tmp_path: Path) -> None:
    host = _host(tmp_path, {DROPIN: "interface=lo\n"})
    with pytest.raises(ParseError) as info, Editor(host, DROPIN, "Dnsmasq.lns") as ed:
        ed.set("interface", "two\nlines")
    message = str(info.value)
    assert "cannot write (put_failed: " in message, message
    assert "(error: error)" not in message
    assert "\n" not in message and len(message) < 400, message


AUGEAS_WITHOUT_COMMANDS = """
import subprocess
def refuse(*args, **kwargs):
    raise AssertionError(f"ran {args[0] if args else kwargs.get('args')}")
subprocess.Popen = refuse  # ctypes.util.find_library runs ldconfig -p through it
from virtdeb.augeaslib import augeas_instance
aug = augeas_instance()
aug.set("/t/text", "log_level = 1\\n")
aug.text_store("Libvirtd.lns", "/t/text", "/t/tree")
assert aug.get("/t/tree/log_level") in ("1", b"1"), aug.get("/t/tree/log_level")
"""


def test_augeas_is_loaded_without_running_ldconfig() -> None:
    """python-augeas 0.5 looks libaugeas up with ``ldconfig -p``; the Editor gives it the
    soname instead (1.x needs neither)."""
    proc = subprocess.run([sys.executable, "-c", AUGEAS_WITHOUT_COMMANDS], cwd=TOP,
                          env={**CLEAN_ENV, "PYTHONPATH": str(TOP)}, capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
