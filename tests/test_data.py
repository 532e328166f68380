"""``dixc.data``: crash-safe part files, consolidation, merging, the torch reader, rotations."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from dixc import data, reference

CONFIG = {"basis": "sto-3g", "k_grad": 1, "k_hess": 1}


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "atoms/numbers": np.array([8, 1, 1]),
        "scf/e_tot": np.float64(-76.0 - seed),
        "scf/dm": rng.standard_normal((4, 4)),
        "tddft/tda_converged": np.array([True, False]),
    }


def _write(parts: str, mid: str, seed: int = 0, failed: bool = False, config=CONFIG) -> str:
    attrs = {"id": mid, "reason": "test failure"} if failed else {"id": mid, "nao": 4}
    os.makedirs(parts, exist_ok=True)
    return data.write_part(
        parts, mid, data.file_attrs(config), _arrays(seed), attrs, {"total": 1.0}, failed=failed
    )


def test_sigkill_during_write_leaves_only_complete_molecules(tmp_path):
    parts = str(tmp_path / "shard.parts")
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from dixc import data
        attrs = data.file_attrs({CONFIG!r})
        data.write_part({parts!r}, "done", attrs, {{"x": np.ones(3)}}, {{"id": "done"}})
        with data.atomic_h5(os.path.join({parts!r}, "half.h5")) as f:
            f.create_dataset("molecules/half/x", data=np.ones(10**6))
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    os.makedirs(parts)
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert os.path.exists(os.path.join(parts, "half.h5.tmp"))  # the interrupted write
    assert [os.path.basename(p) for p in data.list_parts(parts)] == ["done.h5"]
    shard = str(tmp_path / "shard.h5")
    n_ok, n_failed = data.consolidate(shard, parts, data.file_attrs(CONFIG), remove_parts=False)
    assert (n_ok, n_failed) == (1, 0)
    assert data.stored_ids(shard) == ({"done"}, set())


def test_reader_yields_torch_tensors(tmp_path):
    parts = str(tmp_path / "s.parts")
    for k, mid in enumerate(["b", "a", "c"]):
        _write(parts, mid, seed=k)
    shard = str(tmp_path / "s.h5")
    assert data.consolidate(shard, parts, data.file_attrs(CONFIG)) == (3, 0)
    assert not os.path.exists(parts)
    ds = data.ReferenceDataset(str(tmp_path))
    assert ds.ids == ["a", "b", "c"] and len(ds) == 3 and ds.config == CONFIG
    rec = ds["b"]
    assert rec.id == "b" and rec.attrs["nao"] == 4 and rec.timings == {"total": 1.0}
    assert rec["scf/dm"].dtype == torch.float64 and rec["scf/dm"].shape == (4, 4)
    assert rec["scf/e_tot"].shape == () and float(rec["scf/e_tot"]) == -76.0
    assert rec["atoms/numbers"].dtype == torch.int64
    assert rec["tddft/tda_converged"].dtype == torch.bool
    torch.testing.assert_close(rec["scf/dm"], torch.from_numpy(_arrays(0)["scf/dm"]))
    # Picklable (DataLoader workers) and usable through a DataLoader.
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2[0].id == "a"
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=list)
    assert [[r.id for r in batch] for batch in loader] == [["a", "b"], ["c"]]
    assert [r.id for r in data.iter_molecules(shard)] == ["a", "b", "c"]
    ds.close()


def test_success_replaces_failure_record(tmp_path):
    parts = str(tmp_path / "s.parts")
    shard = str(tmp_path / "s.h5")
    _write(parts, "x", failed=True)
    _write(parts, "y")
    assert data.consolidate(shard, parts, data.file_attrs(CONFIG)) == (1, 1)
    assert dict(data.iter_failed(shard)) == {"x": "test failure"}
    _write(parts, "x")  # e.g. --retry-failed succeeded
    assert data.consolidate(shard, parts, data.file_attrs(CONFIG)) == (2, 0)
    assert data.stored_ids(shard) == ({"x", "y"}, set())


def test_other_config_and_schema_are_rejected(tmp_path):
    parts_a, parts_b = str(tmp_path / "a.parts"), str(tmp_path / "b.parts")
    _write(parts_a, "m1")
    _write(parts_b, "m2", config={**CONFIG, "k_hess": 2})
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    data.consolidate(a, parts_a, data.file_attrs(CONFIG))
    data.consolidate(b, parts_b, data.file_attrs({**CONFIG, "k_hess": 2}))
    with pytest.raises(ValueError, match="different reference configs"):
        data.merge_files(str(tmp_path / "m.h5"), [a, b])
    with pytest.raises(ValueError, match="different reference configs"):
        data.ReferenceDataset([a, b])
    assert len(data.ReferenceDataset([a, b], allow_mixed=True)) == 2
    with pytest.raises(ValueError, match="another reference config"):
        _write(parts_a, "m3", config={**CONFIG, "k_hess": 2})
        data.consolidate(a, parts_a, data.file_attrs(CONFIG))
    with h5py.File(b, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(ValueError, match="schema version 99"):
        data.ReferenceDataset(b)
    assert "schema_version 99" in data.check_file(b)[0][0]


def test_torch_rotation_matches_numpy_and_is_idempotent():
    rng = np.random.default_rng(1)
    nao, nocc = 7, 3
    c, _ = np.linalg.qr(rng.standard_normal((nao, nao)))  # orthonormal: S = 1
    x = 0.3 * rng.standard_normal((2, nao - nocc, nocc))
    ct = data.rotated_orbitals(torch.from_numpy(c), torch.from_numpy(x))
    for k in range(2):
        np.testing.assert_allclose(ct[k].numpy(), reference.rotate(c, x[k]), atol=1e-13)
    d = data.rotated_density(torch.from_numpy(c), torch.from_numpy(x))
    torch.testing.assert_close(d @ d, 2 * d, atol=1e-12, rtol=0)
    assert torch.allclose(
        torch.diagonal(d, dim1=-2, dim2=-1).sum(-1), torch.tensor(2.0 * nocc, dtype=torch.float64)
    )
    # The Grassmann logarithm inverts the rotation (what SCF-iterate samples rely on).
    c1 = reference.rotate(c, x[0])[:, :nocc]
    np.testing.assert_allclose(reference.log_rotation(c, np.eye(nao), c1, nocc), x[0], atol=1e-10)
