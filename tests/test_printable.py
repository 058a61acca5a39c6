"""Text from a server is data: what a terminal would obey is escaped on every display; --json stays exact."""

from __future__ import annotations

import io
import json

import pytest

from lorawf.cli.display import JsonDisplay, LiveDisplay, LogDisplay
from lorawf.comfy.events import ErrorEvent, Output
from lorawf.printable import json_line, printable

HOSTILE = "ok\x1b]0;pwned\x07\x1b[31mred\rover\u202egnp.exe\x9b2J"


def test_printable_escapes_controls_and_direction_overrides() -> None:
    shown = printable(HOSTILE)
    assert shown == "ok\\x1b]0;pwned\\x07\\x1b[31mred\\rover\\u202egnp.exe\\x9b2J"
    assert printable("plain ünïcode ✔ text") == "plain ünïcode ✔ text"
    assert printable("a\nb\tc", multiline=True) == "a\nb\tc"
    assert printable("a\nb") == "a\\nb"


def test_json_line_is_exact_json_without_raw_controls() -> None:
    line = json_line({"name": HOSTILE, "ok": "ünïcode"})
    assert json.loads(line) == {"name": HOSTILE, "ok": "ünïcode"}
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in line)
    assert "ünïcode" in line  # readable UTF-8 is kept


def hostile_events() -> list[object]:
    return [
        Output("p", node="9", title=HOSTILE, key="images", role="validation", filename=f"{HOSTILE}.png",
               subfolder="x", type="output"),
        ErrorEvent("p", "execution_error", f"node 3: RuntimeError: {HOSTILE}", traceback=(f"line {HOSTILE}\n",)),
    ]


@pytest.mark.parametrize("make", [
    lambda s: LogDisplay(s, verbose=True),
    lambda s: LiveDisplay(s, verbose=True),
])
def test_terminal_displays_print_no_raw_control_characters(make: object) -> None:
    stream = io.StringIO()
    display = make(stream)  # type: ignore[operator]
    for event in hostile_events():
        display(event)
    display.close()
    text = stream.getvalue()
    own_codes = text.replace("\x1b[J", "").replace("\x1b[1F", "").replace("\x1b[2F", "").replace("\x1b[3F", "")
    assert "\x1b]" not in text and "\x07" not in text and "\r" not in text and "\u202e" not in text
    assert "\x1b[31m" not in own_codes and "\x9b" not in text
    assert "\\x1b]0;pwned" in text  # shown, escaped


def test_json_display_keeps_the_exact_text() -> None:
    stream = io.StringIO()
    display = JsonDisplay(stream, verbose=True)
    for event in hostile_events():
        display(event)
    lines = stream.getvalue().splitlines()
    assert json.loads(lines[0])["filename"] == f"{HOSTILE}.png"
    assert json.loads(lines[1])["traceback"] == [f"line {HOSTILE}\n"]
    assert "\x9b" not in stream.getvalue() and "\u202e" not in stream.getvalue()


def test_cli_lines_escape_text_from_files(tmp_path: object) -> None:
    from pathlib import Path

    from click.testing import CliRunner

    from lorawf.cli import main

    workflow = Path(str(tmp_path)) / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": "Evil\x1b]0;pwned\x07Node", "inputs": {}}}))
    result = CliRunner().invoke(main, ["validate", str(workflow)])
    assert result.exit_code == 1
    assert "Evil\\x1b]0;pwned\\x07Node" in result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
