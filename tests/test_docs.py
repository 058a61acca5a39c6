"""The documentation: every console example in README.md and docs/ runs and prints what the page shows, the
command reference is what the commands say, and the site's pages and links hold together.

A console example is a fenced ``console`` block: lines starting with ``$ `` are commands, the lines after each
are its output (stdout and stderr as a terminal shows them). In the output, ``{name}`` stands for any text
within a line (ids, times, sizes) and a line ``...`` for any number of lines. Commands run with bash in a
folder holding ``fixtures/`` (the repository's), copies of the example dataset and the page's own
``# NAME.toml`` blocks (see :func:`sandbox`);
``http://gpu-box:8188`` is a fresh test server. ``echo $?`` prints the previous command's exit code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SERVER = "http://gpu-box:8188"
FENCE = re.compile(r"^```console\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: Any other fenced block with a ``$ lorawf`` line: a console example that would not be run.
UNRUN = re.compile(r"^```(?!console)[a-z]*\n(?:(?!^```).)*?^\$ lorawf", re.DOTALL | re.MULTILINE)
PLACEHOLDER = re.compile(r"\\\{[a-z_]+\\\}")


@dataclass(frozen=True)
class Example:
    command: str
    expected: list[str]


def examples_of(page: Path) -> list[list[Example]]:
    """Every console block of ``page``, as its commands and their expected output."""
    blocks = []
    for match in FENCE.finditer(page.read_text(encoding="utf-8")):
        block: list[Example] = []
        for line in match.group(1).splitlines():
            if line.startswith("$ "):
                block.append(Example(line[2:], []))
            elif block:
                block[-1].expected.append(line.rstrip())
        for example in block:  # a blank line between two commands belongs to neither
            while example.expected and not example.expected[-1]:
                example.expected.pop()
        blocks.append(block)
    return blocks


def pattern(expected: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(PLACEHOLDER.sub(r"[^\n]*?", re.escape(line)) + r"\n")
    return re.compile("".join(parts), re.DOTALL)


def matches(expected: list[str], actual: str) -> bool:
    text = "\n".join(line.rstrip() for line in actual.splitlines())
    text = (text + "\n") if text else ""
    return pattern(expected).fullmatch(text) is not None


TOML_FILE = re.compile(r"^```toml\n# ([\w.-]+\.toml)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def sandbox(tmp: Path, page: Path) -> Path:
    """The folder a page's examples run in: the example dataset as ``my_style/`` and ``datasets/inkwash``,
    20 of its images as ``datasets/charcoal``, and every ``toml`` block of the page that starts with
    ``# NAME.toml`` as that file (so a page's sweep file is the one its examples use)."""
    work = tmp / "work"
    work.mkdir()
    (work / "fixtures").symlink_to(REPO / "fixtures")
    example = REPO / "fixtures" / "datasets" / "ink_wash"
    shutil.copytree(example, work / "my_style")
    shutil.copytree(example, work / "datasets" / "inkwash")
    (work / "datasets" / "charcoal").mkdir()
    images = sorted(p for p in example.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    for image in images[:20]:
        shutil.copy(image, work / "datasets" / "charcoal" / image.name)
    for match in TOML_FILE.finditer(page.read_text(encoding="utf-8")):
        (work / match.group(1)).write_text(f"# {match.group(1)}\n{match.group(2)}", encoding="utf-8")
    return work


def run_block(block: list[Example], work: Path, server_url: str | None) -> list[tuple[Example, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(work.parent / "cache"), "COLUMNS": "100",
                "LORAWF_POLL_INTERVAL": "0.3"})
    results = []
    last = 0
    for example in block:
        command = example.command.replace("$?", str(last))
        if server_url is not None:
            command = command.replace(SERVER, server_url)
        proc = subprocess.run(["bash", "-c", command], check=False, cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300, stdin=subprocess.DEVNULL)
        last = proc.returncode
        output = proc.stdout if server_url is None else proc.stdout.replace(server_url, SERVER)
        results.append((example, output))
    return results


PAGES_WITH_EXAMPLES = [p for p in PAGES if examples_of(p)]


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_console_example_prints_what_the_page_shows(page: Path, tmp_path: Path,
                                                          comfy_server_factory: Callable[..., Any]) -> None:
    text = page.read_text(encoding="utf-8")
    server_url = comfy_server_factory(step_delay=0.0005).url if SERVER in text else None
    work = sandbox(tmp_path, page)
    for block in examples_of(page):
        for example, output in run_block(block, work, server_url):
            assert matches(example.expected, output), (
                f"{page.relative_to(REPO)}: `$ {example.command}` printed:\n{output}\n--- the page shows:\n"
                + "\n".join(example.expected))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_with_a_prompt_is_a_console_block(page: Path) -> None:
    assert not UNRUN.search(page.read_text(encoding="utf-8")), \
        f"{page.relative_to(REPO)}: a `$ lorawf` example outside a console block would never be checked"


def test_the_example_matcher_fails_on_a_changed_line() -> None:
    assert matches(["a {id} b", "...", "end"], "a 123 b\nx\ny\nend\n")
    assert matches(["a", "..."], "a\n")
    assert not matches(["a {id} b", "end"], "a 123 c\nend\n")
    assert not matches(["one"], "one\ntwo\n")


def test_the_command_reference_is_generated_from_the_commands() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("commands_reference", REPO / "docs" / "commands_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (REPO / "docs" / "reference" / "commands.md").read_text(encoding="utf-8")
    assert committed == module.render(), "docs/reference/commands.md is stale: run python docs/commands_reference.py"
    from lorawf.cli import main

    for name in main.all_commands():
        assert f"## `lorawf {name}`" in committed


def test_readme_is_short_and_reaches_the_four_common_tasks_in_two_clicks() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 150
    links = set(re.findall(r"\]\((docs/[^)#]+\.md)", readme))
    for target in links:
        assert (REPO / target).is_file(), target
    reachable = {REPO / t for t in links}
    for page in list(reachable):
        for link in re.findall(r"\]\(([^)#:]+\.md)", page.read_text(encoding="utf-8")):
            reachable.add((page.parent / link).resolve())
    texts = {p: p.read_text(encoding="utf-8") for p in reachable if p.is_file()}
    for task, needle in (("train my first LoRA", "lorawf run"), ("patch my own template", "--template"),
                         ("run it from CI", "regen --check"), ("fix 'prompt lost'", "prompt lost")):
        assert any(needle in text for text in texts.values()), task


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_the_site_builds_strict(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    proc = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], check=False, cwd=REPO, text=True,
                          capture_output=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "commands" / "index.html").is_file()
