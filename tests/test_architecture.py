"""The house rules: modules have no side effects at import, per-image stages stay light, every stage has the same
call, the run folder hands out typed ids; and the bugs found by the architecture review stay fixed."""

from __future__ import annotations

import inspect
import json
import os
import pkgutil
import subprocess
import sys

import pandas as pd
import pytest

import cellresponse
from cellresponse.input.runfolder import RunFolder
from cellresponse.stages import PIPELINE, stage_module

MODULES = sorted(m.name for m in pkgutil.walk_packages(cellresponse.__path__, "cellresponse."))


def _python(code: str, stderr: bool = False) -> str:
    """What ``code`` prints in a fresh interpreter (its stderr first, with ``stderr``)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return (result.stderr + result.stdout if stderr else result.stdout).strip()


def test_importing_every_module_changes_no_global_state():
    """No environment variable, umask or matplotlib backend changes when the package is imported. Lightning and
    MONAI set environment variables at their own import, so they are imported before the snapshot."""
    probe = f"""
import os, json, importlib, matplotlib, torch, lightning, monai, dask.distributed
env, backend = dict(os.environ), dict.__getitem__(matplotlib.rcParams, "backend")
mask = os.umask(0o022); os.umask(mask)
for name in {MODULES!r}:
    importlib.import_module(name)
after = os.umask(0o022); os.umask(after)
changed = sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k))
print(json.dumps({{"env": changed, "umask": [mask, after],
                  "backend": [str(backend), str(dict.__getitem__(matplotlib.rcParams, "backend"))]}}))
"""
    state = json.loads(_python(probe))
    assert state["env"] == []
    assert state["umask"][0] == state["umask"][1]
    assert state["backend"][0] == state["backend"][1]


def test_stages_without_a_network_do_not_import_torch():
    """segment / measure / crops run in every Dask worker: importing them must not pull in torch, Lightning
    or MONAI (seconds per worker); nor must the stages that only read tables (profile, and report, which names
    the bundle's models without loading one: 3 s of a 9-second `cellresponse report`), nor predict, which loads
    torch only where the network or the embedder runs. One interpreter imports them in turn and notes what each
    import brought in, so a failure names the stage that pulled torch first."""
    stages = ["images", "segment", "measure", "crops", "profile", "report", "predict"]
    probe = f"""
import importlib, json, sys
import cellresponse.cli
heavy = ("torch", "lightning", "monai", "safetensors")
pulled = {{}}
for name in {stages!r}:
    importlib.import_module("cellresponse.stages." + name)
    pulled[name] = [m for m in heavy if m in sys.modules]
print(json.dumps(pulled))
"""
    assert json.loads(_python(probe)) == {name: [] for name in stages}


def test_a_prediction_by_measured_profiles_never_imports_torch(tiny_demo, tiny_plates, tmp_path):
    """The measured profile model with measured references needs neither the network nor the embedder: the whole
    prediction, report included, runs without torch, Lightning or MONAI (on the walk-through's plate, already
    segmented: 10.6-11.9 s against 13.1-13.7 s with them, docs/results.md); and the same bundle still predicts
    with its network when asked, in the same process. A GPU asked for is not needed there: one line, no refusal."""
    demo, _ = tiny_demo
    load_data, out = tiny_plates / "load_data.csv", tmp_path / "predicted"
    args = ["predict", str(demo / "run"), "--load-data", str(load_data), "--no-progress"]
    probe = f"""
import json, sys
from cellresponse.cli import main
measured = ["--model", "measured", "--set", "references.kind=measured", "--set", "training.accelerator=gpu"]
codes = [main({args!r} + ["--out", {str(out)!r}, *measured])]
heavy = [m for m in ("torch", "lightning", "monai", "safetensors") if m in sys.modules]
codes.append(main({args!r} + ["--out", {str(tmp_path / "network")!r}, "--model", "network"]))
print(json.dumps({{"codes": codes, "heavy": heavy}}))
"""
    printed = _python(probe, stderr=True)
    result = json.loads(printed.splitlines()[-1])
    assert result == {"codes": [0, 0], "heavy": []}
    # a GPU asked for (absent here) is not needed: said in a line, not refused
    assert "training.accelerator=gpu: nothing in this prediction runs on it" in printed
    assert (out / "predictions" / "treatment_calls.parquet").is_file() and (out / "report" / "index.html").is_file()
    network = pd.read_parquet(tmp_path / "network" / "predictions" / "image_predictions.parquet")
    assert set(network["model"]) == {"network"}


@pytest.mark.parametrize("name", PIPELINE)
def test_every_stage_has_the_same_call(name):
    parameters = inspect.signature(stage_module(name).run).parameters
    assert list(parameters)[:2] == ["run", "config"]
    for keyword in ("overwrite", "progress"):
        assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY, (name, keyword)


def test_run_and_demo_follow_the_pipeline_order():
    from cellresponse.cli import build_parser

    run = next(a for a in build_parser()._actions if a.dest == "verb").choices["run"]
    choices = {a.dest: a.choices for a in run._actions if a.dest in ("from_stage", "until_stage")}
    assert tuple(choices["from_stage"]) == tuple(choices["until_stage"]) == PIPELINE


def test_run_folder_tables_have_string_ids(tmp_path):
    run = RunFolder(tmp_path / "run").create()
    pd.DataFrame({"image_id": [1, 2], "plate": ["P", "P"]}).to_parquet(run.images)
    images = run.read_images()
    assert images["image_id"].tolist() == ["1", "2"]
    assert all(isinstance(v, str) for v in images["image_id"])


def test_missing_input_names_a_command_that_works(tmp_path):
    """The suggested command for a missing image table is one that can be typed as is (it needs --out); a run folder
    that does not exist at all is said not to exist (a mistyped path is not a run that lacks a stage)."""
    (tmp_path / "run").mkdir()
    with pytest.raises(cellresponse.errors.InputError, match=r"--out .*run`"):
        RunFolder(tmp_path / "run").read_images()
    with pytest.raises(cellresponse.errors.InputError, match="does not exist"):
        RunFolder(tmp_path / "typo").read_images()


def test_seed_everything_leaves_pythonhashseed_alone(monkeypatch):
    """Setting PYTHONHASHSEED after the interpreter started has no effect; the old code set it anyway."""
    from cellresponse.learning.training import seed_everything

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    seed_everything(3)
    assert "PYTHONHASHSEED" not in os.environ


def test_no_function_is_longer_than_80_lines():
    """The house rule: a function that does not fit on a screen is split into named steps."""
    import ast
    from pathlib import Path

    long = []
    for path in Path(cellresponse.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_every_benchmark_script_still_imports():
    """The benchmarks are scripts nobody runs in CI; a module moved or a name renamed breaks them silently (session
    33's split left ``benchmarks/predict_cost.py`` importing a function train no longer had). Each is imported, not
    run, in one fresh interpreter with ``benchmarks/`` on the path as when run from the repository root."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    scripts = sorted(name[:-3] for name in os.listdir(folder) if name.endswith(".py"))
    assert len(scripts) > 20
    probe = f"""
import importlib, json, sys
sys.path.insert(0, {folder!r})
broken = {{}}
for name in {scripts!r}:
    try:
        importlib.import_module(name)
    except Exception as error:
        broken[name] = repr(error)
print(json.dumps(broken))
"""
    assert json.loads(_python(probe)) == {}


def test_files_the_library_names_in_its_docstrings_exist():
    """A docstring or comment that sends a reader to ``crop_store.py`` must name a file there is: after modules
    moved (session 33), ten still named the old ones (``store.py``, ``calls.py``, ``selection.py``, …)."""
    import re
    from pathlib import Path

    root = Path(cellresponse.__file__).parents[2]
    files = {p.name for folder in ("src", "tests", "benchmarks") for p in (root / folder).rglob("*.py")}
    stale = [
        f"{path.relative_to(root)}:{number}: {name}"
        for path in sorted((root / "src").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for name in re.findall(r"\b([a-z_]+\.py)\b", line)
        if name not in files
    ]
    assert not stale, stale
