"""``lorawf sweep``: many training runs over several ComfyUI hosts, followed in one event loop.

No broker and no workers: each host's own queue runs the prompts. This module places runs on hosts (the
pure rule is :func:`lorawf.comfy.dispatch.choose_host`), runs each one with the ordinary pipeline
(:func:`lorawf.runs.pipeline.run`, so every run folder is a normal one), moves a run whose host went away
to another host, and keeps ``sweep.json`` and the comparison page current. It never prints: everything it
has to say goes to the :class:`~lorawf.runs.sweep_events.SweepReporter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorawf.comfy.dispatch import MAX_MOVES, is_host_fault, plan_placements
from lorawf.comfy.events import Done, Event, Notice, Progress, Queued, Started
from lorawf.errors import (
    Cancelled,
    InputError,
    LorawfError,
    RunFailed,
    UsageError,
    exit_code_for,
    outcome_for,
)
from lorawf.runs.fleet import Host, RunMeter, Speed, is_answering_error, monotonic
from lorawf.runs.sweep_events import HostChange, Placed, RunDone, SweepDone, SweepReporter
from lorawf.runs.sweep_record import ATTEMPTS_DIR, PAGE_NAME, PLACED, Attempt, SweepRecord, SweepRun

if TYPE_CHECKING:
    from lorawf.runs.engine import FollowOptions
    from lorawf.training.sweep import RunSpec, ServerSpec, SweepSpec

#: Seconds between looks at every host's queue (``LORAWF_SWEEP_POLL`` changes it, for tests).
POLL_INTERVAL = 1.0
#: How long a sweep with work left waits for a host to answer again when none does.
COMEBACK_WAIT = 1800.0


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep. ``timeout``: the follow timeout of each run (``None``: as long as it takes)."""

    timeout: float | None = None
    poll_interval: float = POLL_INTERVAL
    comeback_wait: float = COMEBACK_WAIT
    preflight: bool = True
    page: bool = True

    @classmethod
    def from_env(cls, **kwargs: object) -> SweepOptions:
        options = cls(**kwargs)  # type: ignore[arg-type]
        raw = os.environ.get("LORAWF_SWEEP_POLL")
        with contextlib.suppress(ValueError):
            if raw:
                options = replace(options, poll_interval=max(0.05, float(raw)))
        return options


def host_settings(spec: ServerSpec, environ: Mapping[str, str] | None = None) -> Host:
    """A :class:`Host` for a ``[[server]]``, its credentials read from the environment variables it names."""
    from lorawf.net.settings import settings_from_env_names

    settings = settings_from_env_names(spec.url, token_env=spec.token_env, headers_env=spec.headers_env,
                                       ca_bundle=str(spec.ca_bundle) if spec.ca_bundle else None,
                                       insecure=spec.insecure, where=f"server {spec.name}", environ=environ)
    return Host(spec, settings)


def new_record(spec: SweepSpec) -> SweepRecord:
    """The first ``sweep.json``: every run pending."""
    from lorawf.timefmt import utc_now
    from lorawf.training.plan import plan_training

    runs = tuple(SweepRun(r.name, r.to_dict(), plan_training(r.dataset.images, r.plan_overrides()).max_train_steps)
                 for r in spec.runs)
    return SweepRecord(spec.name, str(spec.source), utc_now(), tuple(s.to_dict() for s in spec.servers), runs,
                       str(spec.template) if spec.template else None)


async def run_sweep(spec: SweepSpec, sweep_dir: Path, reporter: SweepReporter,
                    options: SweepOptions | None = None, environ: Mapping[str, str] | None = None) -> SweepRecord:
    """Run every run of ``spec`` into ``sweep_dir`` (created; it must not hold a sweep already)."""
    from lorawf.runs.sweep_record import SWEEP_RECORD

    if not spec.servers:
        raise UsageError(f"{spec.source}: no [[server]] to run on; add one with url = \"http://HOST:8188\"")
    if not spec.runs:
        raise InputError(f"{spec.source}: the sweep has no runs")
    hosts = [host_settings(s, environ) for s in spec.servers]  # every credential is checked before anything
    if (sweep_dir / SWEEP_RECORD).exists():
        raise InputError(f"{sweep_dir}: holds a sweep already; `lorawf sweep resume {sweep_dir}` carries it on, "
                         "or choose another --out")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    engine = SweepEngine(sweep_dir, new_record(spec), list(spec.runs), hosts, spec.template, reporter,
                         options or SweepOptions.from_env())
    return await engine.run()


async def resume_sweep(sweep_dir: Path, reporter: SweepReporter, options: SweepOptions | None = None,
                       environ: Mapping[str, str] | None = None) -> SweepRecord:
    """Carry on a sweep from its ``sweep.json``: re-attach to prompts still queued or running, place the runs
    that never started or were cancelled, keep the ones that ended."""
    from lorawf.runs.sweep_record import read_sweep
    from lorawf.training.sweep import RunSpec, ServerSpec

    record = read_sweep(sweep_dir)
    servers = [ServerSpec.from_dict(s) for s in record.servers]
    hosts = [host_settings(s, environ) for s in servers]
    specs = [RunSpec.from_dict(r.spec) for r in record.runs]
    engine = SweepEngine(sweep_dir, replace(record, outcome="running"), specs, hosts,
                         Path(record.template) if record.template else None, reporter,
                         options or SweepOptions.from_env())
    for run in record.runs:
        if run.state in ("cancelled", "pending", "preparing") or (run.state in PLACED and not run.prompt_id):
            engine.start_again(run)
    return await engine.run()


class SweepEngine:
    """Places, follows and moves the runs of one sweep; one instance per ``lorawf sweep`` command."""

    def __init__(self, sweep_dir: Path, record: SweepRecord, specs: Sequence[RunSpec], hosts: Sequence[Host],
                 template: Path | None, reporter: SweepReporter, options: SweepOptions) -> None:
        self.sweep_dir = sweep_dir
        self.record = record
        self.specs = {s.name: s for s in specs}
        self.hosts = {h.name: h for h in hosts}
        self.template = template
        self.reporter = reporter
        self.options = options
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.meters: dict[str, RunMeter] = {}
        self.wake = asyncio.Event()
        self.secrets = tuple(v for h in hosts for v in h.settings.secret_values())
        self.last_saved = 0.0
        self.page_task: asyncio.Task[None] | None = None
        self.page_again = False
        self.no_host_since: float | None = None
        self.queued_at: dict[str, float] = {}  # run name -> when its prompt was queued (monotonic)
        self.placeable = True  # did the last placement round find a host for every waiting run?

    # ------------------------------------------------------------------------------------ the record

    def save(self) -> None:
        from lorawf.runs.sweep_record import write_sweep
        from lorawf.timefmt import utc_now

        servers = []
        for server in self.record.servers:
            host = self.hosts.get(str(server.get("name")))
            if host is not None:
                state = "up" if host.up else ("down" if host.answered or host.reason else "unknown")
                server = {**server, "state": state, "reason": host.reason, "comfyui_version": host.version}
            servers.append(server)
        self.record = replace(self.record, updated=utc_now(), servers=tuple(servers))
        write_sweep(self.sweep_dir, self.record, self.secrets)
        self.last_saved = monotonic()

    def update(self, name: str, **changes: object) -> SweepRun:
        run = replace(self.record.run(name), **changes)  # type: ignore[arg-type]
        self.record = self.record.with_run(run)
        self.save()
        return run

    def say(self, event: Event, run: str | None = None, host: str | None = None) -> None:
        self.reporter(event, run=run, host=host)

    # ------------------------------------------------------------------------------------ the loop

    async def run(self) -> SweepRecord:
        self.save()
        try:
            await self._loop()
        except asyncio.CancelledError:
            await self._cancel_all()
            raise Cancelled("cancelled") from None
        return await self._finish()

    async def _loop(self) -> None:
        await self._look_at_hosts(first=True)
        self._reattach()
        while True:
            self._place()
            self._prefetch()
            if all(r.final for r in self.record.runs) and not self.tasks:
                return
            self.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.options.poll_interval)
            await self._look_at_hosts()
            self._check_stalled()

    async def _look_at_hosts(self, first: bool = False) -> None:
        """Every host's queue, in parallel; a host that does not answer is down (its runs' own followers give
        it the usual grace before they give up); one that answers again is learned afresh."""
        now = monotonic()
        ours = {r.prompt_id for r in self.record.runs if r.prompt_id}
        due = [h for h in self.hosts.values() if h.up or now >= h.next_probe]

        async def look(host: Host) -> None:
            try:
                if not host.up:
                    await host.learn()
                asked = monotonic()
                queue = await host.read_queue()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to answer is "down"; a bug shows in the reason
                reason = str(exc).splitlines()[0] if is_answering_error(exc) else f"{type(exc).__name__}: {exc}"
                if host.mark_down(reason, monotonic()) or first:
                    self.say(HostChange(None, host.name, "down", host.settings.secrets.scrub(reason)), host=host.name)
                return
            host.note_queue(queue, ours)
            if not host.up:
                host.up, host.failures, host.reason = True, 0, None
                self.say(HostChange(None, host.name, "up", f"{host.where}: ComfyUI {host.version}"), host=host.name)
            self._note_finished_prompts(host, asked)

        await asyncio.gather(*(look(h) for h in due))
        if first:
            self.save()

    def _note_finished_prompts(self, host: Host, asked: float) -> None:
        """A run whose prompt left its host's queue no longer holds a slot there (it is downloading). Only a
        queue read after the prompt was queued says so."""
        for run in self.record.runs:
            if run.host == host.name and run.state in ("queued", "running") and run.prompt_id \
                    and run.prompt_id not in host.queued_ids and self.queued_at.get(run.name, 0.0) < asked:
                self.update(run.name, state="finishing")

    def _check_stalled(self) -> None:
        """Runs left and no host that could take them: wait for one to come back, for so long."""
        waiting = [r for r in self.record.runs if r.state == "pending"]
        if not waiting or self.tasks or self.placeable:
            self.no_host_since = None
            return
        now = monotonic()
        if self.no_host_since is None:
            self.no_host_since = now
            self.say(Notice(None, f"no host that can take the waiting runs answers; waiting up to {self.options.comeback_wait:g} s for one to "
                                  "come back", warning=True))
        elif now - self.no_host_since >= self.options.comeback_wait:
            for run in waiting:
                self.update(run.name, state="error", error="no host answered within "
                            f"{self.options.comeback_wait:g} s; `lorawf sweep resume` carries on")

    def start_again(self, run: SweepRun) -> None:
        """A run that never got going, or was cancelled, waits for a host again; what its last try left is kept
        under ``attempts/``."""
        attempts = run.attempts
        folder = self._set_aside(run.name, len(attempts) + 1)
        if folder is not None or run.state == "cancelled":
            attempts = (*attempts, Attempt(run.host or "", run.prompt_id, run.state, run.error, folder))
        self.record = self.record.with_run(replace(run, state="pending", host=None, prompt_id=None, step=0,
                                                   error=None, finished=None, attempts=attempts))

    # ------------------------------------------------------------------------------------ placing

    def _busy(self, host: Host) -> tuple[int, float]:
        """Our runs holding a slot on ``host`` and the training steps they still have."""
        placed = [r for r in self.record.runs if r.host == host.name and r.state in PLACED]
        return len(placed), float(sum(max(0, r.steps - r.step) for r in placed))

    def _live_speed(self, host: Host) -> Speed:
        speed = Speed()
        for run in self.record.runs:
            meter = self.meters.get(run.name)
            if run.host == host.name and meter is not None and run.state in ("running", "queued"):
                steps, seconds = meter.measured
                speed.steps += steps
                speed.seconds += seconds
        return speed

    def _foreign_seconds(self) -> float:
        """What another user's prompt is assumed to cost: our mean run time so far (else one minute)."""
        done = [r for r in self.record.runs if r.state == "success" and r.started and r.finished]
        if not done:
            return 60.0
        return sum((r.finished - r.started).total_seconds() for r in done if r.finished and r.started) / len(done)

    def _place(self) -> None:
        """Plan where every waiting run goes (:func:`~lorawf.comfy.dispatch.plan_placements`), then start the
        ones whose planned host has a free slot now."""
        pending = [r for r in self.record.runs if r.state == "pending"]
        self.placeable = True
        work: list[tuple[SweepRun, list[str]]] = []
        for run in pending:
            spec = self.specs[run.name]
            able, reasons = [], []
            for host in self.hosts.values():
                if not host.answered:
                    continue
                why = host.check(spec, self.template)
                if why is None:
                    able.append(host)
                else:
                    reasons.append(f"{host.name}: {why}")
            if not able:
                if all(h.answered for h in self.hosts.values()):
                    self._cannot_run(run, reasons)
                else:
                    self.placeable = False  # a host that never answered may be the one
                continue
            if not any(h.up for h in able):
                self.placeable = False
            work.append((run, [h.name for h in able]))
        if not work:
            return
        views = {h.name: h.view(*self._busy(h), self._live_speed(h)) for h in self.hosts.values()}
        plan = plan_placements([(run.steps - run.from_step, able) for run, able in work], list(views.values()),
                               foreign_seconds=self._foreign_seconds())
        for (run, _able), target in zip(work, plan):
            if target is not None and views[target].free > 0:
                view = views[target]
                views[target] = replace(view, ours=view.ours + 1,
                                        backlog_steps=view.backlog_steps + run.steps - run.from_step)
                self._start(run, self.hosts[target])

    def _prefetch(self) -> None:
        """Put the datasets of waiting runs on each host that could run them, one upload at a time per host, while
        it trains something else: the run that needs one later finds it there."""
        for host in self.hosts.values():
            if not host.up or host.folders is None or any(not t.done() for t in host.datasets.values()):
                continue
            for run in self.record.runs:
                spec = self.specs[run.name]
                if run.state == "pending" and spec.dataset.folder not in host.datasets \
                        and host.check(spec, self.template) is None:
                    report = functools.partial(self._host_event, host.name)
                    task = asyncio.ensure_future(host.dataset_path(spec.dataset.token, spec.dataset.folder, report))
                    task.add_done_callback(_quietly)
                    break

    def _host_event(self, host: str, event: Event) -> None:
        self.say(event, host=host)

    def _cannot_run(self, run: SweepRun, reasons: list[str]) -> None:
        message = "no host can run it: " + " | ".join(reasons)
        self.update(run.name, state="skipped", error=message)
        self.say(RunDone(None, run.name, "", "skipped", exit_code_for(InputError("")), message), run=run.name)
        for host in self.hosts.values():
            if host.capable.get(run.name):
                self.say(HostChange(None, host.name, "incapable", f"{run.name}: {host.capable[run.name]}"),
                         host=host.name)

    def _start(self, run: SweepRun, host: Host, reattach: bool = False) -> None:
        attempt = len(run.attempts) + 1
        if not reattach:
            run = self.update(run.name, state="preparing", host=host.name, prompt_id=None, step=run.from_step,
                              error=None)
        self.say(Placed(run.prompt_id, run.name, host.name, attempt, run.from_step), run=run.name, host=host.name)
        self.meters[run.name] = RunMeter()
        task = asyncio.ensure_future(self._attempt(run.name, host, reattach))
        self.tasks[run.name] = task
        task.add_done_callback(functools.partial(self._ended, run.name))

    def _ended(self, name: str, _task: object = None) -> None:
        self.tasks.pop(name, None)
        self.wake.set()

    def _reattach(self) -> None:
        """After ``sweep resume``: follow the prompts that were queued or running when the last one stopped."""
        for run in self.record.runs:
            if run.state in (*PLACED, "finishing") and run.prompt_id and run.host in self.hosts:
                self._start(run, self.hosts[str(run.host)], reattach=True)

    # ------------------------------------------------------------------------------------ one attempt

    def _run_reporter(self, name: str, host: Host) -> RunReporter:
        return RunReporter(self, name, host, self.record.run(name).from_step)

    async def _attempt(self, name: str, host: Host, reattach: bool) -> None:
        from lorawf.runs import pipeline
        from lorawf.runs.engine import FollowOptions

        spec = self.specs[name]
        reporter = self._run_reporter(name, host)
        follow = FollowOptions(timeout=self.options.timeout)
        try:
            run = self.record.run(name)
            if reattach:
                await pipeline.resume(host.settings, self.sweep_dir / name, reporter, follow, as_you_go=True)
            elif run.from_step:
                await self._continue_on(host, spec, run, reporter, follow)
            else:
                path = await host.dataset_path(spec.dataset.token, spec.dataset.folder, reporter)
                request = pipeline.RunRequest(
                    token=spec.dataset.token, dataset=spec.dataset.folder, overrides=spec.plan_overrides(),
                    template=self.template, sets=spec.sets, upload=False, server_dataset_path=path,
                    download_root=self.sweep_dir, download_as_you_go=True, preflight=self.options.preflight,
                    name=name)
                await pipeline.run(host.settings, request, reporter, follow)
        except (asyncio.CancelledError, Cancelled):  # the pipeline turns our cancel into Cancelled
            self.update(name, state="cancelled", error="cancelled", finished=_now())
            raise
        except LorawfError as exc:
            self._failed(name, host, exc, reporter.prompt_id)
        except Exception as exc:  # noqa: BLE001 - one run's bug must not end the other runs
            self._failed(name, host, exc, reporter.prompt_id)
        else:
            self.update(name, state="success", error=None, finished=_now(), step=self.record.run(name).steps)
            self._host_trained(host, name)
            self._page()
        finally:
            self.meters.pop(name, None)

    async def _continue_on(self, host: Host, spec: RunSpec, run: SweepRun, reporter: RunReporter,
                           follow: FollowOptions) -> None:
        """A moved run: its newest local checkpoint goes to the new host and training continues from there."""
        from lorawf.runs.continuing import Carry, continue_elsewhere, newest_local_checkpoint
        from lorawf.runs.record import read_record

        run_dir = self.sweep_dir / run.name
        checkpoints = [int(s) for s in read_record(run_dir).plan.get("checkpoint_steps") or []]
        found = newest_local_checkpoint(run_dir, checkpoints)
        if found is None or found[0] != run.from_step:
            raise InputError(f"{run_dir}: the checkpoint of step {run.from_step} is no longer on the local disk")
        path = await host.dataset_path(spec.dataset.token, spec.dataset.folder, reporter)
        previous = run.attempts[-1].host if run.attempts else "its host"
        carry = Carry(found[1], found[0], path, spec.dataset.token, spec.dataset.images, spec.plan_overrides(),
                      spec.sets, self.template, note=f"moved from {previous} to {host.name}")
        await continue_elsewhere(host.settings, run_dir, reporter, carry, follow)

    def _host_trained(self, host: Host, name: str) -> None:
        meter = self.meters.get(name)
        if meter is not None:
            steps, seconds = meter.measured
            host.speed.steps += steps
            host.speed.seconds += seconds

    def _failed(self, name: str, host: Host, exc: BaseException, prompt_id: str | None) -> None:
        message = host.settings.secrets.scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        run = self.record.run(name)
        if is_host_fault(exc):
            if host.mark_down(message, monotonic()):
                self.say(HostChange(None, host.name, "down", message), host=host.name)
            carry = self._carry_from(name)
            folder = None if carry else self._set_aside(name, len(run.attempts) + 1)
            attempt = Attempt(host.name, prompt_id or run.prompt_id, "lost", message, folder, run.from_step)
            attempts = (*run.attempts, attempt)
            if sum(a.outcome == "lost" for a in attempts) > MAX_MOVES:
                self.update(name, state="error", attempts=attempts, finished=_now(),
                            error=f"its host failed {MAX_MOVES + 1} times; last: {message}")
                self._page()
                return
            where = f"from its checkpoint at step {carry}" if carry else "from the start"
            self.say(Notice(None, f"{name}: {host.name} failed ({message}); placing it again {where}",
                            warning=True), run=name, host=host.name)
            self.update(name, state="pending", host=None, prompt_id=None, step=carry, from_step=carry,
                        attempts=attempts, error=None)
            return
        self._host_trained(host, name)
        state = "failed" if isinstance(exc, RunFailed) else "error"
        if not isinstance(exc, LorawfError):
            message = f"internal error ({type(exc).__name__}: {message}); please report it"
        self.update(name, state=state, error=message, finished=_now())
        self._page()

    def _carry_from(self, name: str) -> int:
        """The step of the newest checkpoint of ``name`` already on the local disk (0: none), from which a
        moved run continues on its next host."""
        from lorawf.runs.continuing import newest_local_checkpoint
        from lorawf.runs.record import read_record

        run_dir = self.sweep_dir / name
        try:
            checkpoints = [int(s) for s in read_record(run_dir).plan.get("checkpoint_steps") or []]
        except LorawfError:
            return 0
        found = newest_local_checkpoint(run_dir, checkpoints)
        return found[0] if found else 0

    def _set_aside(self, name: str, attempt: int) -> str | None:
        """Move a failed attempt's folder under ``attempts/`` (never deleted); the next attempt gets the run's
        own folder name."""
        folder = self.sweep_dir / name
        if not folder.exists():
            return None
        target = self.sweep_dir / ATTEMPTS_DIR / f"{name}-attempt{attempt}"
        n = 1
        while target.exists():
            n += 1
            target = self.sweep_dir / ATTEMPTS_DIR / f"{name}-attempt{attempt}-{n}"
        target.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(target)
        return target.relative_to(self.sweep_dir).as_posix()

    # ------------------------------------------------------------------------------------ the end

    async def _cancel_all(self) -> None:
        """Ctrl-C: every run's own pipeline cancels its prompt (ours only, by id) and records it."""
        tasks: list[asyncio.Future[Any]] = [*self.tasks.values(),
                                                *(t for h in self.hosts.values() for t in h.datasets.values())]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for run in self.record.runs:
            if not run.final:
                self.record = self.record.with_run(replace(run, state="cancelled", error="cancelled",
                                                           finished=run.finished or _now()))
        self.record = replace(self.record, outcome="cancelled")
        self.save()
        await self._write_page(final=True)
        self.say(SweepDone(None, "cancelled", exit_code_for(Cancelled("")), "sweep cancelled; "
                           f"`lorawf sweep resume {self.sweep_dir}` carries it on", self.record.counts(),
                           self._page_path()))

    async def _finish(self) -> SweepRecord:
        counts = self.record.counts()
        bad = [r for r in self.record.runs if r.state != "success"]
        outcome = "success" if not bad else "failed"
        self.record = replace(self.record, outcome=outcome)
        self.save()
        await self._write_page(final=True)
        total = len(self.record.runs)
        if not bad:
            message = f"{total} of {total} runs succeeded"
            self.say(SweepDone(None, "success", 0, message, counts, self._page_path()))
            return self.record
        first = bad[0]
        message = (f"{total - len(bad)} of {total} runs succeeded; {first.name}: {first.state}"
                   f"{': ' + first.error if first.error else ''}" + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
        error = RunFailed(message)
        self.say(SweepDone(None, outcome_for(error), exit_code_for(error), message, counts, self._page_path()))
        raise error

    # ------------------------------------------------------------------------------------ the page

    def _page_path(self) -> str | None:
        return str(self.sweep_dir / PAGE_NAME) if self.options.page else None

    def _page(self) -> None:
        """Redraw the comparison page in a thread, at most one at a time (the last change always counts)."""
        if not self.options.page:
            return
        if self.page_task is not None and not self.page_task.done():
            self.page_again = True
            return
        self.page_task = asyncio.ensure_future(self._write_page())

    async def _write_page(self, final: bool = False) -> None:
        """The page: HTML only while runs train (cheap: it must not slow the loop that feeds the hosts), with the
        PNG grids at the end."""
        if not self.options.page:
            return
        if self.page_task is not None and not self.page_task.done() and self.page_task is not asyncio.current_task():
            with contextlib.suppress(Exception):
                await self.page_task
        while True:
            self.page_again = False
            try:
                await asyncio.to_thread(functools.partial(write_sweep_page, png=final), self.sweep_dir, self.record)
            except LorawfError as exc:
                self.say(Notice(None, f"comparison page not written: {exc}", warning=True))
            if not self.page_again or final:
                return


def write_sweep_page(sweep_dir: Path, record: SweepRecord, *, png: bool = True) -> None:
    """``SWEEP_DIR/index.html`` (and, with ``png``, one PNG grid per prompt) over the runs that have a folder."""
    from lorawf.runs.compare import load_compare_runs, write_compare_page

    dirs = [sweep_dir / r.name for r in record.runs if (sweep_dir / r.name / "run.json").exists()]
    hosts = {r.name: r.host for r in record.runs if r.host}
    runs = load_compare_runs(dirs, hosts)
    write_compare_page(runs, sweep_dir / PAGE_NAME, title=f"sweep {record.name}", png=png)


def _quietly(task: asyncio.Future[Any]) -> None:
    """A prefetch that failed is tried again by the run that needs the dataset; its error is that run's."""
    if not task.cancelled():
        task.exception()


def _now() -> datetime:
    from lorawf.timefmt import utc_now

    return utc_now()


class RunReporter:
    """One run's events, tagged with the run and host, that keep ``sweep.json`` current on the way."""

    def __init__(self, engine: SweepEngine, name: str, host: Host, offset: int = 0) -> None:
        self.engine = engine
        self.offset = offset  # a continued segment counts its steps from 0 again
        self.name = name
        self.host = host
        self.prompt_id: str | None = None

    def __call__(self, event: Event, /) -> None:
        engine, name = self.engine, self.name
        if isinstance(event, Queued) and event.prompt_id:
            self.prompt_id = event.prompt_id
            engine.queued_at[name] = monotonic()
            run = engine.record.run(name)
            if run.state in ("preparing", "pending"):
                engine.update(name, state="queued", prompt_id=event.prompt_id)
            else:
                engine.update(name, prompt_id=event.prompt_id)
        elif isinstance(event, Started):
            if engine.record.run(name).state in ("preparing", "queued"):
                engine.update(name, state="running", started=engine.record.run(name).started or _now())
        elif isinstance(event, Progress) and event.overall_value is not None:
            meter = engine.meters.get(name)
            if meter is not None:
                meter.sample(monotonic(), event.overall_value)
            run = engine.record.run(name)
            if run.state == "queued":
                engine.update(name, state="running", started=run.started or _now())
            step = self.offset + event.overall_value
            engine.record = engine.record.with_run(replace(engine.record.run(name), step=step))
            if monotonic() - engine.last_saved > 2.0:
                engine.save()
        if isinstance(event, Done):
            engine.say(RunDone.of(event, name, self.host.name), run=name, host=self.host.name)
            return
        engine.say(event, run=name, host=self.host.name)


@dataclass(frozen=True)
class FleetCheck:
    """What ``sweep plan`` found out about one host: its state and, per run, why it cannot run it (or ``None``)."""

    host: str
    url: str
    state: str  # up, down, not checked (offline), no credentials
    message: str
    runs: dict[str, str | None]


async def check_fleet(spec: SweepSpec, environ: Mapping[str, str] | None = None) -> list[FleetCheck]:
    """Ask every host of the sweep, in parallel, whether it answers and which runs it can take (its nodes and
    model files, by the same preflight a run makes). Nothing is uploaded or queued."""

    async def check(server: ServerSpec) -> FleetCheck:
        try:
            host = host_settings(server, environ)
        except LorawfError as exc:
            return FleetCheck(server.name, server.url, "no credentials", str(exc), {})
        try:
            await host.learn()
        except Exception as exc:  # noqa: BLE001 - any failure to answer is "down", said in one line
            message = host.settings.secrets.scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return FleetCheck(server.name, host.settings.redacted_url, "down", message, {})
        runs = {run.name: host.check(run, spec.template) for run in spec.runs}
        if any(runs.values()):
            await host.refresh_schemas()  # a stale cache must not call a host incapable
            runs = {run.name: host.check(run, spec.template) for run in spec.runs}
        return FleetCheck(server.name, host.settings.redacted_url, "up", f"ComfyUI {host.version}", runs)

    return list(await asyncio.gather(*(check(s) for s in spec.servers)))
