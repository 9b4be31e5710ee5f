"""The code's structure: import-linter's layer contracts (pyproject.toml), the registry's one-line entries, each
method's public math importable from its package, and a method listing that never imports torch."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainers import METHODS, get_method, method_keys, method_summaries

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    r = subprocess.run([exe, "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout and "5 kept" in r.stdout, r.stdout[-2000:]


def test_listing_methods_imports_neither_torch_nor_ray():
    code = ("import json, sys; from trainers import method_summaries; s = method_summaries(); "
            "print(json.dumps({'keys': list(s), 'heavy': [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules]}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["keys"] == list(METHODS) and out["heavy"] == []


@pytest.mark.parametrize("key", list(METHODS))
def test_registry_line_names_a_spec_module_with_the_same_key(key):
    assert METHODS[key] == f"trainers.{key}.spec"
    spec = get_method(key)
    assert spec.key == key
    patent, summary = method_summaries()[key]
    assert spec.patent == patent and spec.summary == summary and patent.startswith("JP")
    assert (REPO / "docs" / "methods" / f"{key}.md").is_file(), "each method documents itself in docs/methods/"


@pytest.mark.parametrize("key", method_keys())
def test_every_public_name_of_a_method_package_resolves(key):
    import importlib

    pkg = importlib.import_module(f"trainers.{key}")
    assert pkg.__all__, f"trainers.{key} exports its math"
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
    with pytest.raises(AttributeError):
        getattr(pkg, "no_such_name")


def test_spine_import_of_the_decorrelation_math():
    import torch

    from trainers.decorrelation import correlation_loss, correlation_matrix

    x = torch.randn(64, 5, dtype=torch.float64)
    r = correlation_matrix(x)
    assert torch.allclose(r.diagonal(), torch.ones(5, dtype=torch.float64))
    assert float(correlation_loss(x)) >= 0.0


def test_no_file_outside_the_repo_is_pointed_at():
    """A user's clone holds only this repository: no code, test or document may point at the internal specs."""
    hits = []
    MARKERS = ("shared" + "/methods", "shared" + "/patents", "../" + "shared")  # spelled so: this file is scanned too
    for p in REPO.rglob("*"):
        if p.suffix not in (".py", ".md", ".toml", ".yaml", ".yml") or any(
                part in (".venv", ".git", "node_modules") or part.startswith(".") for part in p.relative_to(REPO).parts):
            continue
        text = p.read_text(errors="replace")
        if any(m in text for m in MARKERS):
            hits.append(str(p.relative_to(REPO)))
    assert hits == [], hits
