"""Run names: safe for file names, UTC, sortable, unique."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from lorawf.errors import InputError
from lorawf.training.naming import MAX_STEM, run_name, unique_run_name

WHEN = datetime(2026, 11, 25, 18, 15, 2, tzinfo=timezone.utc)


def test_example_name() -> None:
    assert run_name("inkwash", 30, WHEN) == "inkwash-30img-20261125-181502"


def test_time_is_converted_to_utc() -> None:
    tokyo = WHEN.astimezone(timezone(timedelta(hours=9)))
    assert tokyo.hour == 3
    assert run_name("inkwash", 30, tokyo) == "inkwash-30img-20261125-181502"


@pytest.mark.parametrize("token", ["ink wash", "../../etc/passwd", "ink/wash\\x", "  ", "墨", "a:b*c?"])
def test_hostile_tokens_give_file_safe_names(token: str) -> None:
    name = run_name(token, 12, WHEN)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert not name.startswith(".") and ".." not in name
    assert name.endswith("-12img-20261125-181502")


def test_long_token_is_cut() -> None:
    name = run_name("x" * 500, 7, WHEN)
    assert name == "x" * MAX_STEM + "-7img-20261125-181502"


def test_names_sort_by_time() -> None:
    times = [WHEN + timedelta(seconds=s) for s in (0, 59, 3600, 86400 * 40, 86400 * 400)]
    names = [run_name("ink", 30, t) for t in times]
    assert sorted(names) == names  # times are increasing, so names must already be in sorted order


def test_unique_run_name_with_a_set_and_a_predicate() -> None:
    base = run_name("ink", 30, WHEN)
    assert unique_run_name("ink", 30, WHEN, set()) == base
    assert unique_run_name("ink", 30, WHEN, {base}) == f"{base}-2"
    taken = {base, f"{base}-2", f"{base}-3"}
    assert unique_run_name("ink", 30, WHEN, lambda n: n in taken) == f"{base}-4"


@pytest.mark.parametrize("images", [-1, True, 2.5])
def test_bad_image_count(images: object) -> None:
    with pytest.raises(InputError, match="image count"):
        run_name("ink", images, WHEN)  # type: ignore[arg-type]
