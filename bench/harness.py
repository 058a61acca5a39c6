"""The benchmark harness: samples, statistics, targets, process timing and the JSON result format.

A *case* is a function ``run(ctx) -> CaseResult``. It records *metrics* (each a list of samples, reduced to
median, min, max and quartiles) and *targets* (a measured value compared with a limit, PASS or MISS). Every
comparison with another tool is a ratio of two metrics measured side by side, interleaved, in the same run,
so that a slower or busier machine moves both sides alike.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "lorawf.bench/1"
ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


# ------------------------------------------------------------------------------------------ context


@dataclass
class Context:
    """What every case gets: how many samples to take, whether to use small sizes, and a scratch folder."""

    repeat: int
    quick: bool
    workdir: Path
    verbose: bool = False

    def log(self, message: str) -> None:
        """Progress line on stderr (the results table goes to stdout)."""
        print(f"  .. {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ results


@dataclass
class Metric:
    """One measured quantity: every sample, in ``unit``; summarised by median and spread."""

    name: str
    unit: str
    samples: list[float]
    description: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def minimum(self) -> float:
        return min(self.samples)

    @property
    def maximum(self) -> float:
        return max(self.samples)

    def quartiles(self) -> tuple[float, float]:
        """First and third quartile (equal to min/max below four samples)."""
        if len(self.samples) < 4:
            return self.minimum, self.maximum
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[0], q[2]

    def to_dict(self) -> dict[str, Any]:
        q1, q3 = self.quartiles()
        return {
            "unit": self.unit, "description": self.description, "n": len(self.samples),
            "median": self.median, "min": self.minimum, "max": self.maximum, "q1": q1, "q3": q3,
            "samples": self.samples,
        }


@dataclass
class Target:
    """A goal from the issue: ``value`` (a median, or a ratio of medians) must be ``op`` ``limit``."""

    name: str
    description: str
    value: float
    op: str  # "<=" or ">="
    limit: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    @property
    def margin(self) -> float:
        """How far from the limit, as a fraction of it: positive = room to spare, negative = missed by."""
        if self.limit == 0:
            return 0.0
        if self.op == "<=":
            return (self.limit - self.value) / abs(self.limit)
        return (self.value - self.limit) / abs(self.limit)

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "value": self.value, "op": self.op, "limit": self.limit,
                "unit": self.unit, "passed": self.passed, "margin": self.margin}


@dataclass
class CaseResult:
    """The outcome of one case: ``ok`` with metrics and targets, or ``skipped``/``error`` with a reason."""

    name: str
    title: str
    status: str = "ok"
    reason: str = ""
    metrics: dict[str, Metric] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def metric(self, name: str, unit: str, samples: Sequence[float], description: str = "") -> Metric:
        """Record a metric and return it."""
        m = Metric(name, unit, [float(s) for s in samples], description)
        self.metrics[name] = m
        return m

    def target(self, name: str, description: str, value: float, op: str, limit: float, unit: str = "") -> Target:
        """Record a target and return it."""
        t = Target(name, description, float(value), op, float(limit), unit)
        self.targets.append(t)
        return t

    def skip(self, reason: str) -> CaseResult:
        """Mark the case skipped (e.g. offline, or a module it measures has not landed)."""
        self.status, self.reason = "skipped", reason
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "status": self.status, "reason": self.reason, "seconds": self.seconds,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "targets": {t.name: t.to_dict() for t in self.targets},
            "info": self.info,
        }


class Skip(Exception):
    """Raised by a case that cannot run here; the message is the reason shown in the report."""


# ------------------------------------------------------------------------------------------ timing


def time_per_call(func: Callable[[], object], min_seconds: float) -> float:
    """Seconds per call of ``func``, calling it in a loop until ``min_seconds`` have passed (one sample)."""
    calls = 0
    start = time.perf_counter()
    while True:
        func()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


@dataclass(frozen=True)
class ProcessRun:
    """Wall time, CPU time and peak RSS of one finished child process."""

    wall: float
    cpu: float
    maxrss_bytes: int
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""


def run_process(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                capture: bool = False) -> ProcessRun:
    """Run ``cmd`` to completion; wall time from spawn to exit, CPU and peak RSS from ``wait4``.

    The peak RSS is only meaningful while this process is small: Linux folds the parent's high-water mark
    into a vfork+exec'd child's ``ru_maxrss`` (cases that measure memory read ``VmHWM`` in the child).

    Captured output goes through temporary files, not pipes, so that ``wait4`` (not ``communicate``) reaps
    the child and its resource usage is ours to read.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL,
                                stdout=out if capture else subprocess.DEVNULL,
                                stderr=err if capture else subprocess.DEVNULL, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout = stderr = b""
        if capture:
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
    return ProcessRun(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, proc.returncode,
                      stdout, stderr)


def interleaved(commands: Mapping[str, Sequence[str]], rounds: int, *, warmup: int = 1,
                env: dict[str, str] | None = None, check: bool = True) -> dict[str, list[ProcessRun]]:
    """Run every command once per round, in turn, so that drift in machine load hits all of them alike."""
    for _ in range(warmup):
        for cmd in commands.values():
            run_process(cmd, env=env)
    out: dict[str, list[ProcessRun]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            result = run_process(cmd, env=env, capture=check)
            if check and result.returncode != 0:
                raise RuntimeError(f"{name}: `{' '.join(cmd)}` exited {result.returncode}: "
                                   f"{result.stderr.decode(errors='replace').strip()[-400:]}")
            out[name].append(result)
    return out


def rss_bytes(pid: int) -> int:
    """Current resident set size of a process, from ``/proc/PID/status`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far, from ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# ------------------------------------------------------------------------------------------ commands


def python_floor() -> list[str]:
    """The bare interpreter, the same one lorawf runs on: ``python -c pass``."""
    return [sys.executable, "-c", "pass"]


def lorawf_command() -> list[str]:
    """How a user starts lorawf: the installed console script, else ``python -m lorawf`` from the checkout."""
    scripts = Path(sysconfig.get_path("scripts"))
    script = scripts / "lorawf"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("lorawf")
    if found and "shims" not in found:  # a pyenv shim adds a bash start; measure the real script instead
        return [found]
    return [sys.executable, "-m", "lorawf"]


def machine() -> dict[str, Any]:
    """A description of this machine for the results: CPUs, CPU model, memory, OS, Python."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "mem_total_bytes": mem,
        "platform": platform.platform(), "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(), "executable": sys.executable,
    }


# ------------------------------------------------------------------------------------------ formatting


def fmt_value(value: float, unit: str) -> str:
    """Human-readable number in its unit (seconds shown as ms or us)."""
    if unit == "s":
        if abs(value) >= 1:
            return f"{value:.3f} s"
        if abs(value) >= 1e-3:
            return f"{value * 1e3:.2f} ms"
        return f"{value * 1e6:.1f} us"
    if unit == "B":
        return f"{value / MiB:.1f} MiB"
    if unit == "B/s":
        return f"{value / MiB:.0f} MiB/s"
    if unit in ("x", "ratio"):
        return f"{value:.3f}x"
    if unit == "%":
        return f"{value:.2f} %"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.3g} {unit}".strip()


def format_case(result: CaseResult) -> str:
    """The text block printed for one case: metrics with spread, then targets with PASS/MISS."""
    lines = [f"== {result.name}: {result.title}"]
    if result.status != "ok":
        lines.append(f"   {result.status.upper()}: {result.reason}")
        return "\n".join(lines)
    width = max((len(n) for n in result.metrics), default=10)
    for name, m in result.metrics.items():
        q1, q3 = m.quartiles()
        lines.append(
            f"   {name:<{width}}  median {fmt_value(m.median, m.unit):>14}   "
            f"min {fmt_value(m.minimum, m.unit):>12}  max {fmt_value(m.maximum, m.unit):>12}  "
            f"IQR {fmt_value(q1, m.unit)}..{fmt_value(q3, m.unit)}  (n={len(m.samples)})"
        )
    for t in result.targets:
        verdict = "PASS" if t.passed else "MISS"
        how = f"{abs(t.margin) * 100:.0f}% {'under' if t.op == '<=' else 'over'} the limit" if t.passed else \
            f"missed by {abs(t.margin) * 100:.0f}%"
        lines.append(f"   [{verdict}] {t.description}: {fmt_value(t.value, t.unit)} "
                     f"(target {t.op} {fmt_value(t.limit, t.unit)}; {how})")
    return "\n".join(lines)
