"""Sweep files: many training runs in one TOML file, validated, expanded and named. No network.

A sweep is the product of its ``[[dataset]]`` tables and its ``[grid]`` (or an explicit ``[[run]]`` list),
run on its ``[[server]]`` hosts. Every problem is one :class:`~lorawf.errors.InputError` line that names the
file and the key (``sweep.toml: grid.lr[2]: ...``). A server's credentials are named, never written: a key
that would hold a secret is refused, and ``token_env``/``headers_env`` hold environment variable *names*.
"""

from __future__ import annotations

import difflib
import itertools
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lorawf.errors import InputError, OverrideError
from lorawf.fsutil import read_text
from lorawf.printable import printable
from lorawf.safepaths import file_stem
from lorawf.training.families import FAMILIES
from lorawf.training.naming import MAX_RUN_NAME, check_run_name
from lorawf.training.overrides import OVERRIDE_NAMES
from lorawf.training.plan import PlanOverrides, overrides_from_names, plan_training, validate_overrides

#: The most runs one sweep file may make (a typo in a grid should not queue ten thousand trainings).
MAX_RUNS = 1000
DEFAULT_SLOTS = 2
OVERRIDE_KEYS = tuple(o.name for o in OVERRIDE_NAMES)
_TYPES = {o.name: o.type for o in OVERRIDE_NAMES}
_FIELDS = {o.name: o.field for o in OVERRIDE_NAMES}
#: Short name parts for keys whose own name is long.
_NAME_PART = {"steps_per_image": "spi"}
_TOP_KEYS = ("name", "model", "template", "set", "dataset", "grid", "run", "server")
_DATASET_KEYS = ("folder", "token", "name", "set", *OVERRIDE_KEYS)
_GRID_KEYS = (*OVERRIDE_KEYS, "set")
_RUN_KEYS = ("dataset", "name", "set", *OVERRIDE_KEYS)
_SERVER_KEYS = ("url", "name", "token_env", "headers_env", "ca_bundle", "insecure", "slots")
#: Keys that would put a credential in the file: refused, with the key to use instead.
_SECRET_KEYS = ("token", "headers", "header", "password", "api_key", "auth", "authorization")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

Value = int | float


@dataclass(frozen=True)
class DatasetSpec:
    """One ``[[dataset]]``: a local folder of images, its trigger token, its own overrides and sets."""

    name: str
    folder: Path
    token: str
    images: int
    overrides: Mapping[str, Value]
    sets: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "folder": str(self.folder), "token": self.token, "images": self.images,
                "overrides": dict(self.overrides), "sets": list(self.sets)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        return cls(str(data["name"]), Path(data["folder"]), str(data["token"]), int(data["images"]),
                   dict(data.get("overrides") or {}), tuple(data.get("sets") or ()))


@dataclass(frozen=True)
class ServerSpec:
    """One ``[[server]]``: where it is and the names of the environment variables that hold its secrets."""

    url: str
    name: str
    token_env: str | None = None
    headers_env: tuple[tuple[str, str], ...] = ()
    ca_bundle: Path | None = None
    insecure: bool = False
    slots: int = DEFAULT_SLOTS

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "token_env": self.token_env,
                "headers_env": dict(self.headers_env), "ca_bundle": str(self.ca_bundle) if self.ca_bundle else None,
                "insecure": self.insecure, "slots": self.slots}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerSpec:
        return cls(str(data["url"]), str(data["name"]), data.get("token_env"),
                   tuple((str(k), str(v)) for k, v in (data.get("headers_env") or {}).items()),
                   Path(data["ca_bundle"]) if data.get("ca_bundle") else None, bool(data.get("insecure")),
                   int(data.get("slots") or DEFAULT_SLOTS))


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep: its dataset, the overrides and sets it trains with, what sets it apart."""

    name: str
    dataset: DatasetSpec
    values: Mapping[str, Value]
    sets: tuple[str, ...] = ()
    differs: tuple[tuple[str, str], ...] = ()

    def plan_overrides(self) -> PlanOverrides:
        return overrides_from_names(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset.to_dict(), "values": dict(self.values),
                "sets": list(self.sets), "differs": [list(d) for d in self.differs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        return cls(str(data["name"]), DatasetSpec.from_dict(data["dataset"]), dict(data.get("values") or {}),
                   tuple(data.get("sets") or ()), tuple((str(k), str(v)) for k, v in data.get("differs") or ()))


@dataclass(frozen=True)
class SweepSpec:
    """A whole sweep file, expanded."""

    source: Path
    name: str
    template: Path | None
    datasets: tuple[DatasetSpec, ...]
    runs: tuple[RunSpec, ...]
    servers: tuple[ServerSpec, ...]
    model: str | None = None  # the base-model family of every run (None: flux, or what the template trains)


# ------------------------------------------------------------------------------------------ reading


def load_sweep(path: Path, count_images: Callable[[Path], int] | None = None) -> SweepSpec:
    """Read and expand a sweep file; every problem is one line naming the file and the key."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    text = read_text(Path(path), missing="no such sweep file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: {str(exc).splitlines()[0]}; see https://toml.io for the syntax") from None
    return parse_sweep(data, Path(path), count_images)


def parse_sweep(data: Mapping[str, Any], source: Path,
                count_images: Callable[[Path], int] | None = None) -> SweepSpec:
    """:func:`load_sweep` of already-parsed TOML; paths are relative to ``source``'s folder."""
    where = _Where(source)
    counter = count_images or _count_images
    _known(data, _TOP_KEYS, where, "")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        where.fail("name", f"{_show(name)} is not a text; give a plain name like \"styles\"")
    try:
        check_run_name(name)
    except InputError as exc:
        where.fail("name", str(exc).partition(": ")[2] or str(exc))
    template = _path(data, "template", where, "template") if "template" in data else None
    model = data.get("model")
    if model is not None and model not in FAMILIES:
        where.fail("model", f"{_show(model)} is not a model family; choose one of "
                            f"{', '.join(repr(f) for f in FAMILIES)}")
    top_sets = _sets(data.get("set", []), where, "set")
    datasets = _datasets(data.get("dataset"), where, counter)
    if "grid" in data and "run" in data:
        where.fail("run", "a sweep has either a [grid] or a [[run]] list, not both")
    if "run" in data:
        combos = _runs(data["run"], datasets, where)
        order: list[str] = []
    else:
        combos = _grid(data.get("grid", {}), datasets, where)
        order = [k for k in data.get("grid", {}) if k in OVERRIDE_KEYS]
    if len(combos) > MAX_RUNS:
        where.fail("grid" if "grid" in data else "run", f"the file makes {len(combos)} runs; at most {MAX_RUNS}")
    runs = _name_runs(combos, top_sets, where, order)
    servers = _servers(data.get("server", []), where)
    return SweepSpec(Path(source), name, template, tuple(datasets), tuple(runs), tuple(servers), model)


class _Where:
    """Names the file and key of a problem."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> None:
        raise InputError(f"{self.source}: {key}: {message}" if key else f"{self.source}: {message}")


def _show(value: object) -> str:
    text = printable(repr(value) if not isinstance(value, str) else f'"{value}"')
    return text if len(text) <= 60 else text[:57] + "..."


def _known(table: Mapping[str, Any], keys: Sequence[str], where: _Where, at: str,
           secret_hint: Callable[[str], str] | None = None) -> None:
    for key in table:
        if secret_hint is not None and key.lower() in _SECRET_KEYS:
            where.fail(f"{at}.{key}" if at else key, secret_hint(key))
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where.fail(at or key, f"unknown key '{printable(key)}'{hint}; known: {', '.join(keys)}")


def _table_list(value: Any, where: _Where, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        where.fail(key, f"expected [[{key}]] tables")
    return list(value)


def _path(table: Mapping[str, Any], key: str, where: _Where, at: str) -> Path:
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        where.fail(at, f"{_show(value)}: expected a path (text), relative to the sweep file's folder")
    path = Path(value).expanduser()
    return (path if path.is_absolute() else Path(where.source).resolve().parent / path).resolve()


def _sets(value: Any, where: _Where, at: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v and "." in v.split("=")[0]
                                              for v in value):
        where.fail(at, f"{_show(value)}: expected a list of \"NODE.input=VALUE\" texts, as `lorawf run --set`")
    return tuple(value)


def _value(key: str, value: Any, where: _Where, at: str) -> Value:
    kind = _TYPES[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        where.fail(at, f"{_show(value)} is not a number; give numbers like "
                       f"{'16' if kind is int else '1e-4'}")
    if kind is int and not isinstance(value, int):
        where.fail(at, f"{_show(value)} is not a whole number; {key} takes integers like 16")
    if value <= 0:
        where.fail(at, f"{_show(value)}: must be greater than 0")
    return value  # type: ignore[no-any-return]


def _overrides(table: Mapping[str, Any], where: _Where, at: str) -> dict[str, Value]:
    return {k: _value(k, v, where, f"{at}.{k}" if at else k) for k, v in table.items() if k in OVERRIDE_KEYS}


def _check_plan(values: Mapping[str, Value], where: _Where, at: str) -> None:
    try:
        validate_overrides(overrides_from_names(values), label=lambda field: next(
            k for k, f in _FIELDS.items() if f == field))
    except OverrideError as exc:
        where.fail(at, str(exc))


def _datasets(value: Any, where: _Where, counter: Callable[[Path], int]) -> list[DatasetSpec]:
    if value is None:
        where.fail("dataset", "no [[dataset]]; add one with folder = \"path/to/images\" and token = \"mystyle\"")
    out: list[DatasetSpec] = []
    for index, table in enumerate(_table_list(value, where, "dataset"), start=1):
        at = f"dataset[{index}]"
        _known(table, _DATASET_KEYS, where, at)
        for key in ("folder", "token"):
            if key not in table:
                where.fail(at, f"missing '{key}'")
        token = table["token"]
        if not isinstance(token, str) or not token.strip():
            where.fail(f"{at}.token", f"{_show(token)}: expected the trigger token, a non-empty text")
        name = table.get("name", file_stem(token)[:64].strip("._-") or "style")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            where.fail(f"{at}.name", f"{_show(name)}: expected a short plain name (letters, digits, . _ -)")
        if any(d.name == name for d in out):
            where.fail(f"{at}.name", f"\"{name}\" names another dataset too; give each a different name")
        overrides = _overrides(table, where, at)
        _check_plan(overrides, where, at)
        folder = _path(table, "folder", where, f"{at}.folder")
        out.append(DatasetSpec(name, folder, token.strip(), counter(folder), overrides,
                               _sets(table.get("set", []), where, f"{at}.set")))
    return out


Combo = tuple[DatasetSpec, dict[str, Value], tuple[str, ...], str | None]


def _grid(grid: Any, datasets: list[DatasetSpec], where: _Where) -> list[Combo]:
    """Datasets x every axis; a grid value overrides the dataset's own value for the same key."""
    if not isinstance(grid, dict):
        where.fail("grid", "expected a [grid] table of lists")
    _known(grid, _GRID_KEYS, where, "grid")
    axes: list[tuple[str, list[Any]]] = []
    for key, values in grid.items():
        at = f"grid.{key}"
        if not isinstance(values, list) or not values:
            where.fail(at, f"{_show(values)}: expected a non-empty list, e.g. {key} = [{_example(key)}]")
        if key == "set":
            checked: list[Any] = [_sets([v], where, f"{at}[{i}]")[0] for i, v in enumerate(values, start=1)]
        else:
            checked = [_value(key, v, where, f"{at}[{i}]") for i, v in enumerate(values, start=1)]
        for i, v in enumerate(checked):
            if v in checked[:i]:
                where.fail(f"{at}[{i + 1}]", f"{_show(v)} is in the list twice")
        axes.append((key, checked))
    combos: list[Combo] = []
    for dataset in datasets:
        for choice in itertools.product(*(values for _key, values in axes)):
            values = dict(dataset.overrides)
            sets = dataset.sets
            for (key, _vs), picked in zip(axes, choice):
                if key == "set":
                    sets = (*sets, picked)
                else:
                    values[key] = picked
            _check_plan(values, where, f"grid (with dataset {dataset.name})")
            combos.append((dataset, values, sets, None))
    return combos


def _example(key: str) -> str:
    return {"lr": "1e-4, 4e-4", "set": '"NODE.input=VALUE"'}.get(key, "16, 32" if _TYPES.get(key) is int else "1, 2")


def _runs(value: Any, datasets: list[DatasetSpec], where: _Where) -> list[Combo]:
    combos: list[Combo] = []
    for index, table in enumerate(_table_list(value, where, "run"), start=1):
        at = f"run[{index}]"
        _known(table, _RUN_KEYS, where, at)
        if "dataset" in table:
            dataset = next((d for d in datasets if d.name == table["dataset"]), None)
            if dataset is None:
                where.fail(f"{at}.dataset", f"{_show(table['dataset'])} names no [[dataset]]; known: "
                                            f"{', '.join(d.name for d in datasets)}")
        elif len(datasets) == 1:
            dataset = datasets[0]
        else:
            where.fail(at, f"say which dataset it trains: dataset = \"{datasets[0].name}\"")
        assert dataset is not None
        values = {**dataset.overrides, **_overrides(table, where, at)}
        _check_plan(values, where, at)
        name = table.get("name")
        if name is not None:
            if not isinstance(name, str):
                where.fail(f"{at}.name", f"{_show(name)}: expected a plain name")
            try:
                check_run_name(name)
            except InputError as exc:
                where.fail(f"{at}.name", str(exc).partition(": ")[2] or str(exc))
        combos.append((dataset, values, (*dataset.sets, *_sets(table.get("set", []), where, f"{at}.set")), name))
    if not combos:
        where.fail("run", "the [[run]] list is empty")
    return combos


# ------------------------------------------------------------------------------------------ names


def format_value(key: str, value: Value) -> str:
    """A number as a run name shows it: ``0.0004`` -> ``4e-4``, ``32`` -> ``32``, ``16.0`` -> ``16``."""
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    text = f"{value:g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{int(exponent)}"
    if abs(value) < 0.01:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return text


def _set_part(sets: tuple[str, ...]) -> str:
    parts = []
    for item in sets:
        target, _eq, value = item.partition("=")
        parts.append(file_stem(f"{target.rsplit('.', 1)[-1]}-{value}"))
    return "-".join(parts)


def _name_runs(combos: list[Combo], top_sets: tuple[str, ...], where: _Where,
               order: Sequence[str] = ()) -> list[RunSpec]:
    """Each run named ``<dataset>-<N>img`` plus what differs between the runs (``-lr4e-4-dim32``): the grid's
    keys in the file's order, then any other key that differs."""
    keys = [*order, *(k for k in OVERRIDE_KEYS if k not in order)]
    differing = [k for k in keys if len({c[1].get(k) for c in combos}) > 1]
    sets_differ = len({c[2] for c in combos}) > 1
    runs: list[RunSpec] = []
    taken: set[str] = set()
    for dataset, values, sets, explicit in combos:
        planned = plan_training(dataset.images, overrides_from_names(values))
        differs = [(k, format_value(k, values[k] if k in values else getattr(planned, _FIELDS[k])))
                   for k in differing]
        if sets_differ:
            differs.append(("set", _set_part(tuple(s for s in sets if s not in dataset.sets)) or "none"))
        name = explicit or "-".join([f"{dataset.name}-{dataset.images}img",
                                     *(v if k == "set" else f"{_NAME_PART.get(k, k)}{v}" for k, v in differs)])
        name = name[:MAX_RUN_NAME].rstrip("._-")
        if explicit and name in taken:
            where.fail("run", f"two runs are named \"{name}\"; give each a different name")
        base, n = name, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        runs.append(RunSpec(name, dataset, values, (*top_sets, *sets), tuple(differs)))
    return runs


# ------------------------------------------------------------------------------------------ servers


def _secret_hint(key: str) -> str:
    return (f"key '{key}' would put a secret in the sweep file; name the environment variable that holds it "
            "instead: token_env = \"GPU1_TOKEN\" (or headers_env = {\"X-Api-Key\" = \"GPU1_KEY\"})")


def _env_name(value: Any, where: _Where, at: str) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        where.fail(at, "looks like a secret, not the name of an environment variable (value not shown); "
                       "write the variable's name, e.g. \"GPU1_TOKEN\", and export the secret in it")
    return str(value)


def _servers(value: Any, where: _Where) -> list[ServerSpec]:
    out: list[ServerSpec] = []
    for index, table in enumerate(_table_list(value, where, "server"), start=1):
        at = f"server[{index}]"
        if isinstance(table.get("name"), str):
            at += f" ({printable(table['name'])})"
        _known(table, _SERVER_KEYS, where, at, _secret_hint)
        url = table.get("url")
        if not isinstance(url, str) or not url.strip():
            where.fail(at, "missing 'url'; give url = \"http://HOST:8188\"")
        assert isinstance(url, str)
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            where.fail(f"{at}.url", f"{exc}; expected http://HOST:PORT or https://HOST[:PORT]")
        if parts.username or parts.password or parts.query:
            where.fail(f"{at}.url", "has credentials or a query string (not shown): they would be a secret in the "
                                    "file; use token_env or headers_env")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            where.fail(f"{at}.url", f"{_show(url)}: expected http://HOST:PORT or https://HOST[:PORT]")
        name = table.get("name", f"{parts.hostname}:{port}" if port else str(parts.hostname))
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", name):
            where.fail(f"{at}.name", f"{_show(name)}: expected a short plain name (letters, digits, . _ : -)")
        if any(s.name == name for s in out):
            where.fail(f"{at}.name", f"\"{name}\" names another server too; give each a different name")
        token_env = _env_name(table["token_env"], where, f"{at}.token_env") if "token_env" in table else None
        headers = table.get("headers_env", {})
        if not isinstance(headers, dict):
            where.fail(f"{at}.headers_env", "expected a table: headers_env = {\"X-Api-Key\" = \"ENV_VAR\"}")
        headers_env = []
        for header, var in headers.items():
            if not _HEADER_NAME.fullmatch(header):
                where.fail(f"{at}.headers_env", f"{_show(header)} is not a valid HTTP header name")
            headers_env.append((header, _env_name(var, where, f"{at}.headers_env.{header}")))
        ca_bundle = _path(table, "ca_bundle", where, f"{at}.ca_bundle") if "ca_bundle" in table else None
        insecure = table.get("insecure", False)
        if not isinstance(insecure, bool):
            where.fail(f"{at}.insecure", f"{_show(insecure)}: expected true or false")
        slots = table.get("slots", DEFAULT_SLOTS)
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            where.fail(f"{at}.slots", f"{_show(slots)}: expected a whole number >= 1 (2: one running, one queued)")
        out.append(ServerSpec(url.strip().rstrip("/"), name, token_env, tuple(headers_env), ca_bundle, insecure,
                              slots))
    return out


def _count_images(folder: Path) -> int:
    from lorawf.training.dataset import scan_dataset

    return scan_dataset(folder).image_count
