"""Make the terminal picture of the docs from a real run: ``python docs/screenshots.py``.

A ``lorawf sweep`` of two runs over two processes of the project's test server runs on a real pseudo-terminal
(100 x 14); its output goes through a VT100 emulator (pyte) and the screen, taken while both runs train, is
drawn with Pillow into ``docs/img/terminal-sweep.png``. Needs the test extras and ``pip install pyte``.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "img" / "terminal-sweep.png"
COLUMNS, ROWS = 100, 14
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"


def capture(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120.0) -> list[str]:
    """Run ``args`` on a pty and return the emulated screen at the first moment two runs are a third done."""
    import fcntl
    import re
    import termios

    import pyte

    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    proc = subprocess.Popen(args, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    os.close(slave)
    shot: list[str] | None = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                stream.feed(data)
                lines = list(screen.display)
                steps = [int(m.group(1)) for line in lines if (m := re.search(r" (\d+)/1200  ETA", line))]
                if shot is None and len(steps) >= 2 and min(steps) >= 400:
                    shot = lines
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.wait(timeout=60)
    if shot is None:
        raise SystemExit("the live display never showed two runs training")
    return shot


def draw(lines: list[str], out: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 15)
    left, top, right, bottom = font.getbbox("M")
    cell_w, cell_h = right - left, int((bottom - top) * 1.6)
    pad = 16
    image = Image.new("RGB", (COLUMNS * cell_w + 2 * pad, ROWS * cell_h + 2 * pad), (24, 26, 31))
    pen = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        pen.text((pad, pad + row * cell_h), line.rstrip(), font=font, fill=(220, 223, 228))
    image.save(out, optimize=True)


def main() -> None:
    sys.path.insert(0, str(REPO))
    from tests.comfy_server.plugin import start_server

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        servers = [start_server(work / f"root{i}", log_dir=work, step_delay=delay)
                   for i, delay in enumerate((0.02, 0.03))]
        try:
            data = work / "datasets" / "inkwash"
            shutil.copytree(REPO / "fixtures" / "datasets" / "ink_wash", data)
            tables = "".join(f'\n[[server]]\nname = "gpu{i + 1}"\nurl = "{s.url}"\n' for i, s in enumerate(servers))
            (work / "styles.toml").write_text('name = "styles"\n\n[[dataset]]\nfolder = "datasets/inkwash"\n'
                                              'token = "inkwash"\n\n[grid]\nlr = [1e-4, 4e-4]\n' + tables)
            env = {k: v for k, v in os.environ.items() if not k.startswith("LORAWF_")}
            env.update({"PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(work / "cache"), "TERM": "xterm"})
            lines = capture([sys.executable, "-c", "from lorawf.cli import main; main()", "sweep",
                             str(work / "styles.toml"), "--out", str(work / "out")], env, work)
        finally:
            for server in servers:
                server.stop()
    draw(lines, OUT)
    sys.stdout.write(f"wrote {OUT}\n")


if __name__ == "__main__":
    main()
