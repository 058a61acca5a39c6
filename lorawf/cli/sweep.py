"""``lorawf sweep``: ``sweep SWEEP.toml`` (run it), ``sweep plan SWEEP.toml``, ``sweep resume SWEEP_DIR``.

Thin: parse, call :mod:`lorawf.runs.sweep` with a :class:`~lorawf.cli.sweep_display.SweepConsole`, render.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lorawf.cli.loop import run_async
from lorawf.cli.options import timeout_option
from lorawf.cli.output import say
from lorawf.printable import printable

if TYPE_CHECKING:
    from lorawf.runs.sweep import FleetCheck
    from lorawf.training.sweep import SweepSpec

COMMANDS: list[click.Command] = []


class SweepGroup(click.Group):
    """``lorawf sweep SWEEP.toml`` runs the sweep: a first argument that is not a subcommand is ``start``'s."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group("sweep", cls=SweepGroup, invoke_without_command=False)
def sweep_group() -> None:
    """Many training runs over several ComfyUI hosts, compared on one page.

    \b
    lorawf sweep plan SWEEP.toml     the runs, their plans and which host can take each
    lorawf sweep SWEEP.toml          run them all (same as `lorawf sweep start SWEEP.toml`)
    lorawf sweep resume SWEEP_DIR    carry on after a closed laptop or Ctrl-C
    """


def _load(path: Path) -> SweepSpec:
    """The sweep file, with ``model`` turned into its bundled template (or checked against ``template``)."""
    from dataclasses import replace

    from lorawf.errors import InputError
    from lorawf.training.sweep import load_sweep
    from lorawf.workflow.build import load_template
    from lorawf.workflow.patch import template_family
    from lorawf.workflow.templates import bundled_template_path

    spec = load_sweep(path)
    if spec.model is not None and spec.template is None:
        return replace(spec, template=bundled_template_path(spec.model))
    if spec.model is not None and spec.template is not None:
        found = template_family(load_template(spec.template)[1])
        if found is not None and found.name != spec.model:
            raise InputError(f"{path}: model: {spec.model!r}, but template {spec.template} trains {found.title} "
                             f"(model = {found.name!r}); drop one of the two")
    return spec


def _console(json_mode: bool, verbose: bool, secrets: Any = None) -> Any:
    from lorawf.cli.sweep_display import SweepConsole
    from lorawf.secrets import NO_SECRETS

    return SweepConsole(json_mode=json_mode, verbose=verbose, secrets=secrets or NO_SECRETS)


def _secrets_of(hosts: list[Any]) -> Any:
    from lorawf.secrets import Secrets

    return Secrets.of(v for host in hosts for v in host.settings.secret_values())


@sweep_group.command("start")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The sweep folder (default: lorawf-runs/<sweep name>): sweep.json, index.html, one folder per run.")
@click.option("--no-preflight", is_flag=True, help="Do not check each run against its host's schemas first.")
@click.option("--no-page", is_flag=True, help="Do not write the comparison page (index.html).")
@click.option("--json", "json_mode", is_flag=True, help="NDJSON events (lorawf.event/1, with run and host).")
@timeout_option
@click.option("--verbose", "-v", is_flag=True, help="Show server tracebacks of failed nodes.")
def start_cmd(sweep_file: Path, out: Path | None, no_preflight: bool, no_page: bool, json_mode: bool,
              timeout: float | None, verbose: bool) -> None:
    """Run every run of SWEEP_FILE over its servers; Ctrl-C cancels our prompts on every host (exit 130)."""
    from lorawf.runs import sweep
    from lorawf.runs.sweep_record import PAGE_NAME

    spec = _load(sweep_file)
    hosts = [sweep.host_settings(s) for s in spec.servers]  # credentials checked before anything is created
    sweep_dir = out or Path("lorawf-runs") / spec.name
    console = _console(json_mode, verbose, _secrets_of(hosts))
    console.expect({r.name: r.steps for r in sweep.new_record(spec).runs})
    options = sweep.SweepOptions.from_env(timeout=timeout, preflight=not no_preflight, page=not no_page)
    try:
        run_async(lambda: sweep.run_sweep(spec, sweep_dir, console, options))
    finally:
        console.close()
    if not json_mode:
        say(f"sweep folder: {sweep_dir}" + ("" if no_page else f"; open {sweep_dir / PAGE_NAME}"), err=True)


@sweep_group.command("resume")
@click.argument("sweep_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--no-page", is_flag=True, help="Do not write the comparison page (index.html).")
@click.option("--json", "json_mode", is_flag=True, help="NDJSON events (lorawf.event/1, with run and host).")
@timeout_option
@click.option("--verbose", "-v", is_flag=True, help="Show server tracebacks of failed nodes.")
def resume_cmd(sweep_dir: Path, no_page: bool, json_mode: bool, timeout: float | None, verbose: bool) -> None:
    """Carry on the sweep in SWEEP_DIR: follow the prompts still queued or running, place the runs that never
    started or were cancelled; runs that ended stay as they are."""
    from lorawf.runs import sweep
    from lorawf.runs.sweep_record import read_sweep
    from lorawf.training.sweep import ServerSpec

    record = read_sweep(sweep_dir)
    hosts = [sweep.host_settings(ServerSpec.from_dict(s)) for s in record.servers]
    console = _console(json_mode, verbose, _secrets_of(hosts))
    console.expect({r.name: r.steps for r in record.runs})
    options = sweep.SweepOptions.from_env(timeout=timeout, page=not no_page)
    try:
        run_async(lambda: sweep.resume_sweep(sweep_dir, console, options))
    finally:
        console.close()
    if not json_mode:
        say(f"sweep folder: {sweep_dir}", err=True)


@sweep_group.command("plan")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--offline", is_flag=True, help="Do not ask the servers which runs they can take.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (schema lorawf.sweep_plan/1).")
def plan_cmd(sweep_file: Path, offline: bool, as_json: bool) -> None:
    """Print the runs of SWEEP_FILE, their plans and where each could run (nothing is uploaded or queued)."""
    from lorawf.runs import sweep
    from lorawf.training.plan import plan_training

    spec = _load(sweep_file)
    checks: list[FleetCheck] = [] if offline or not spec.servers else run_async(lambda: sweep.check_fleet(spec))
    model = spec.model or "flux"
    plans = {run.name: plan_training(run.dataset.images, run.plan_overrides(), model=model) for run in spec.runs}
    if as_json:
        click.echo(json.dumps({
            "schema": "lorawf.sweep_plan/1", "name": spec.name, "source": str(spec.source),
            "servers": [{"name": c.host, "url": c.url, "state": c.state, "message": c.message} for c in checks],
            "runs": [{"name": run.name, "dataset": str(run.dataset.folder), "images": run.dataset.images,
                      "token": run.dataset.token, "differs": dict(run.differs), "sets": list(run.sets),
                      "plan": plans[run.name].to_dict(),
                      "hosts": {c.host: c.runs.get(run.name) for c in checks if c.state == "up"}}
                     for run in spec.runs],
        }, indent=2))
        return
    total = sum(p.max_train_steps for p in plans.values())
    say(f"sweep {spec.name}: {len(spec.runs)} runs, {total} training steps in all, "
        f"{len(spec.servers)} server(s)")
    for check in checks:
        say(f"  server {check.host} ({check.url}): {check.state}: {printable(check.message)}")
    for run in spec.runs:
        plan = plans[run.name]
        say(f"\n{run.name}  ({run.dataset.images} images in {run.dataset.folder})")
        say(f"  {plan.max_train_steps} steps, lr {plan.learning_rate:g}, dim {plan.network_dim}, "
            f"alpha {plan.network_alpha:g}, batch {plan.batch_size}, checkpoints at "
            f"{', '.join(map(str, plan.checkpoint_steps))}")
        for advice in plan.advice:
            if advice.severity != "info":
                say(f"  warning: {advice.message}")
        if checks:
            able = [c.host for c in checks if c.state == "up" and c.runs.get(run.name) is None]
            say(f"  can run on: {', '.join(able) if able else 'NO server'}")
            for c in checks:
                if c.state == "up" and c.runs.get(run.name):
                    say(f"  not on {c.host}: {printable(str(c.runs[run.name]))}")
    if not checks and spec.servers and offline:
        say("\n(--offline: the servers were not asked which runs they can take)")


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("compare.html"),
              show_default=True, help="The page to write (one PNG per prompt is written beside it).")
@click.option("--title", default=None, help="The page's title (default: the runs' names).")
@click.option("--no-png", is_flag=True, help="Only the page, no PNG per prompt.")
def compare_cmd(run_dirs: tuple[Path, ...], out: Path, title: str | None, no_png: bool) -> None:
    """One page comparing RUN_DIRS side by side: per validation prompt a grid of runs x checkpoint steps,
    and a table of every run's settings, duration, outcome and LoRA files (links are relative)."""
    from lorawf.errors import InputError
    from lorawf.runs.compare import load_compare_runs, write_compare_page

    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"-o {out}: expected an .html file name")
    runs = load_compare_runs(list(run_dirs))
    page = write_compare_page(runs, out, title=title or "compare " + ", ".join(r.record.name for r in runs),
                              png=not no_png)
    say(f"wrote {page.page} ({page.runs} runs, {page.prompts} prompts, {page.steps} steps, {page.images} images)")
    for png in page.pngs:
        say(f"wrote {png}")


COMMANDS.extend([sweep_group, compare_cmd])
