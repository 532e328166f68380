"""The README's Python snippets run as written (in order, sharing one namespace, as a reader
pasting them into one session would), so the first thing a user copies cannot be stale."""

from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.slow

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    with open(README, encoding="utf-8") as fh:
        blocks = re.findall(r"```python\n(.*?)```", fh.read(), re.S)
    assert len(blocks) >= 3  # kernels, Kohn-Sham engine, PySCF drop-in
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    # what the snippets compute is what they say: an HVP, 16 orbital-Hessian probes, a density
    assert namespace["hvp"].shape == namespace["dm"].shape
    assert namespace["HX"].shape == (16, *namespace["G"].shape)
    assert namespace["dm0"].shape == (namespace["mol"].nao,) * 2
