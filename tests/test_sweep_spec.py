"""Sweep files (lorawf.training.sweep): parsing, validation with one-line errors, expansion and names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lorawf.errors import DatasetError, InputError
from lorawf.training.sweep import MAX_RUNS, RunSpec, ServerSpec, format_value, load_sweep

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "fixtures" / "datasets" / "ink_wash"
IMAGES = {"ink": 43, "charcoal": 120}


def count(folder: Path) -> int:
    return IMAGES[folder.name]


def sweep(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = '''
[[dataset]]
folder = "data/ink"
token = "inkwash"

[[dataset]]
folder = "data/charcoal"
token = "charcoal style"
name = "charcoal"
lr = 2e-4
'''


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(InputError) as info:
        load_sweep(sweep(tmp_path, text), count)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "sweep.toml") + ": ")
    return message


def test_a_grid_is_the_product_of_datasets_and_axes_with_readable_names(tmp_path: Path) -> None:
    spec = load_sweep(sweep(tmp_path, BASE + '\n[grid]\nlr = [1e-4, 4e-4]\ndim = [16, 32]\n'), count)
    assert spec.name == "sweep" and len(spec.runs) == 8
    assert [r.name for r in spec.runs] == [
        "inkwash-43img-lr1e-4-dim16", "inkwash-43img-lr1e-4-dim32", "inkwash-43img-lr4e-4-dim16",
        "inkwash-43img-lr4e-4-dim32", "charcoal-120img-lr1e-4-dim16", "charcoal-120img-lr1e-4-dim32",
        "charcoal-120img-lr4e-4-dim16", "charcoal-120img-lr4e-4-dim32"]
    assert spec.runs[3].differs == (("lr", "4e-4"), ("dim", "32"))
    assert spec.runs[3].plan_overrides().learning_rate == 4e-4 and spec.runs[3].plan_overrides().network_dim == 32
    assert spec.datasets[0].folder == (tmp_path / "data" / "ink").resolve()
    assert spec.datasets[1].token == "charcoal style"


def test_a_grid_value_wins_over_the_datasets_own_and_a_dataset_value_shows_in_the_name(tmp_path: Path) -> None:
    spec = load_sweep(sweep(tmp_path, BASE + '\n[grid]\ndim = [16, 32]\n'), count)
    assert [r.values.get("lr") for r in spec.runs] == [None, None, 2e-4, 2e-4]
    assert spec.runs[2].name == "charcoal-120img-dim16-lr2e-4"  # lr differs between the runs: it is named
    spec = load_sweep(sweep(tmp_path, BASE + '\n[grid]\nlr = [1e-4]\n'), count)
    assert {r.values["lr"] for r in spec.runs} == {1e-4}


def test_without_grid_one_run_per_dataset_and_a_single_run_is_just_dataset_and_images(tmp_path: Path) -> None:
    spec = load_sweep(sweep(tmp_path, BASE), count)
    # the dataset without its own lr is named by the planned one
    assert [r.name for r in spec.runs] == ["inkwash-43img-lr1e-4", "charcoal-120img-lr2e-4"]
    one = load_sweep(sweep(tmp_path, '[[dataset]]\nfolder = "data/ink"\ntoken = "inkwash"\n'), count)
    assert [r.name for r in one.runs] == ["inkwash-43img"]


def test_an_explicit_run_list(tmp_path: Path) -> None:
    text = BASE + '''
[[run]]
dataset = "inkwash"
dim = 32

[[run]]
dataset = "charcoal"
name = "charcoal-strong"
lr = 4e-4
set = ["101.transformer=flux1-dev.safetensors"]
'''
    spec = load_sweep(sweep(tmp_path, text), count)
    assert [r.name for r in spec.runs][1] == "charcoal-strong"
    assert spec.runs[1].values == {"lr": 4e-4} and spec.runs[1].sets == ("101.transformer=flux1-dev.safetensors",)
    assert "run[1]" in error(tmp_path, BASE + "\n[[run]]\nlr = 1e-4\n")  # two datasets: say which
    assert "names no [[dataset]]" in error(tmp_path, BASE + '\n[[run]]\ndataset = "oil"\n')
    assert "not both" in error(tmp_path, BASE + '\n[grid]\nlr = [1e-4]\n\n[[run]]\ndataset = "inkwash"\n')


def test_servers_name_their_secrets_never_hold_them(tmp_path: Path) -> None:
    text = BASE + '''
[[server]]
url = "https://gpu1.example:8188"
token_env = "GPU1_TOKEN"
headers_env = { "X-Api-Key" = "GPU1_KEY" }
ca_bundle = "certs/ca.pem"
slots = 3

[[server]]
url = "http://10.0.0.2:8188/"
'''
    spec = load_sweep(sweep(tmp_path, text), count)
    first, second = spec.servers
    assert first.name == "gpu1.example:8188" and first.token_env == "GPU1_TOKEN" and first.slots == 3
    assert first.headers_env == (("X-Api-Key", "GPU1_KEY"),) and first.ca_bundle == (tmp_path / "certs/ca.pem")
    assert second.url == "http://10.0.0.2:8188" and second.slots == 2
    assert ServerSpec.from_dict(first.to_dict()) == first
    secret = "sk-live-9f8e7d6c5b4a"
    for line in (f'token = "{secret}"', f'headers = {{ "X-Api-Key" = "{secret}" }}', f'password = "{secret}"'):
        message = error(tmp_path, BASE + f'\n[[server]]\nurl = "http://gpu:8188"\n{line}\n')
        assert "would put a secret in the sweep file" in message and "token_env" in message
        assert secret not in message
    message = error(tmp_path, BASE + f'\n[[server]]\nurl = "http://gpu:8188"\ntoken_env = "{secret}"\n')
    assert "looks like a secret" in message and secret not in message
    message = error(tmp_path, BASE + f'\n[[server]]\nurl = "http://user:{secret}@gpu:8188"\n')
    assert "credentials" in message and secret not in message
    assert "different name" in error(tmp_path, BASE + '\n[[server]]\nurl = "http://a:1"\nname = "x"\n'
                                                      '\n[[server]]\nurl = "http://b:1"\nname = "x"\n')
    assert "slots" in error(tmp_path, BASE + '\n[[server]]\nurl = "http://a:1"\nslots = 0\n')


@pytest.mark.parametrize(("grid", "needle"), [
    ('lr = [1e-4, "fast"]', 'grid.lr[2]: "fast" is not a number'),
    ("dim = [16, 32.0]", "grid.dim[2]: 32.0 is not a whole number"),
    ("dim = [true]", "grid.dim[1]: True is not a number"),
    ("lr = 1e-4", "grid.lr: 0.0001: expected a non-empty list"),
    ("lr = []", "expected a non-empty list"),
    ("dim = [16, 16]", "grid.dim[2]: 16 is in the list twice"),
    ("lr = [-1e-4]", "must be greater than 0"),
    ("dim = [200000]", "out of range"),
    ("lrr = [1e-4]", "grid: unknown key 'lrr' (did you mean 'lr'?)"),
])
def test_bad_grid_values_are_one_line_naming_the_key(tmp_path: Path, grid: str, needle: str) -> None:
    assert needle in error(tmp_path, BASE + f"\n[grid]\n{grid}\n")


def test_other_mistakes_name_file_and_key(tmp_path: Path) -> None:
    assert "line 2" in error(tmp_path, "[[dataset]]\nfolder = \n")
    assert "no [[dataset]]" in error(tmp_path, 'name = "x"\n')
    assert "dataset[1]: missing 'token'" in error(tmp_path, '[[dataset]]\nfolder = "data/ink"\n')
    assert "unknown key 'tokn' (did you mean 'token'?)" in error(
        tmp_path, '[[dataset]]\nfolder = "data/ink"\ntoken = "x"\ntokn = "y"\n')
    assert "another dataset" in error(tmp_path, BASE.replace('name = "charcoal"', 'name = "inkwash"'))
    many = BASE + "\n[grid]\n" + "\n".join(f"{k} = [{', '.join(str(i) for i in range(1, 9))}]"
                                           for k in ("dim", "batch", "repeats", "interval"))
    assert f"at most {MAX_RUNS}" in error(tmp_path, many)
    with pytest.raises(InputError, match="no such sweep file"):
        load_sweep(tmp_path / "nope.toml")


def test_spec_round_trips_through_json_for_sweep_resume(tmp_path: Path) -> None:
    spec = load_sweep(sweep(tmp_path, BASE + '\n[grid]\ndim = [16, 32]\nset = ["1.a=1", "1.a=2"]\n'), count)
    for run in spec.runs:
        assert RunSpec.from_dict(run.to_dict()) == run
    assert spec.runs[1].name == "inkwash-43img-dim16-lr1e-4-a-2"


def test_number_formatting_in_names() -> None:
    assert [format_value("lr", v) for v in (0.0004, 1e-4, 0.5, 2.5e-5, 0.05)] == ["4e-4", "1e-4", "0.5", "2.5e-5",
                                                                                  "0.05"]
    assert format_value("dim", 32) == "32" and format_value("alpha", 16.0) == "16"


def test_image_counts_come_from_the_real_dataset_scan(tmp_path: Path) -> None:
    shutil.copytree(DATASET, tmp_path / "data" / "ink")
    spec = load_sweep(sweep(tmp_path, '[[dataset]]\nfolder = "data/ink"\ntoken = "inkwash"\n'))
    assert spec.datasets[0].images == len([p for p in DATASET.iterdir()
                                           if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")])
    with pytest.raises(DatasetError):
        load_sweep(sweep(tmp_path, '[[dataset]]\nfolder = "data/none"\ntoken = "x"\n'))
