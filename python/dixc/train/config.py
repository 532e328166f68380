"""Training configuration: documented dataclasses, loss presets, YAML files and CLI overrides.

Resolution order (later wins): built-in defaults -> the YAML file -> ``--set section.key=value``
and the dedicated CLI flags; then the loss preset (``loss.preset``) sets the terms' ``enabled``
flags (they are honoured as given only with ``preset: custom``). The
resolved configuration is written to ``OUT/config.yaml`` and stored in every checkpoint.

Every field carries its documentation in ``metadata["doc"]``; ``dixc train --print-config``
writes the defaults as commented YAML, and ``docs/train.md`` lists them.
"""

# _f(...) returns dataclasses.field(...) (default + documentation): not a shared default value
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import json
from typing import Any

import yaml

PRESETS: dict[str, dict[str, bool]] = {
    # The literature's ablation (energy + density trained through the SCF, then the DI terms).
    "E+rho": {"energy": True, "scf": True, "grad": False, "hess": False},
    "E+rho+grad": {"energy": True, "scf": True, "grad": True, "hess": False},
    "E+rho+grad+hess": {"energy": True, "scf": True, "grad": True, "hess": True},
}
CUSTOM = "custom"


def _f(default: Any, doc: str, factory: bool = False) -> Any:
    if factory:
        return dataclasses.field(default_factory=default, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass
class DataConfig:
    """Where the reference data come from and how molecules are split and prepared."""

    path: str | None = _f(None, "reference data (dixc generate output: directory, files or index)")
    val_fraction: float = _f(0.1, "fraction of molecules held out for validation (seeded split)")
    val_max: int | None = _f(None, "cap on the number of validation molecules (null: no cap)")
    split_seed: int = _f(0, "seed of the train/validation split (independent of run.seed)")
    max_molecules: int | None = _f(
        None, "use only this many molecules (seeded choice before the split; null: all)"
    )
    grid_level: int | None = _f(
        1,
        "PySCF grid level of the training/validation grid (null: the reference's). Targets do "
        "not depend on it (they are totals, Fock/Hessian blocks); level 1 is ~6x cheaper than 3 "
        "and changes E_xc by ~1e-5 Eh",
    )
    cache_molecules: int = _f(
        32, "molecule contexts (grid, AO values, DF tensor) kept in memory (LRU); 0: no cache"
    )
    ao_memory_mb: float = _f(
        256.0, "largest dense AO array (MiB) a context keeps; above it fused kernels are used"
    )


@dataclasses.dataclass
class ModelConfig:
    """The functional that is trained and its initialisation."""

    arch: str = _f("xcdiff", "architecture (dixc.functionals registry name)")
    arch_config: dict = _f(dict, "constructor arguments of the architecture", factory=True)
    init: str | None = _f(
        None, "start from this functional file (.safetensors; overrides arch/arch_config)"
    )
    init_target: str | None = _f(
        None,
        "regress the fresh architecture onto this classical functional first (e.g. pbe) with "
        "dixc.functionals.pretrain; skipped with a warning where that function does not exist",
    )
    pretrain: dict = _f(dict, "keyword arguments for dixc.functionals.pretrain", factory=True)


@dataclasses.dataclass
class EnergyTerm:
    """Energy at the reference density D* (non-self-consistent)."""

    enabled: bool = _f(True, "switch the term on (honoured with loss.preset: custom only)")
    weight: float = _f(1.0, "weight of (s (E_theta[D*] - E_ref) / N_el)^2 (PBE quality: ~70)")


@dataclasses.dataclass
class SCFTerm:
    """Energy and density along an unrolled SCF (graph through every cycle)."""

    enabled: bool = _f(True, "switch the term on (honoured with loss.preset: custom only)")
    energy_weight: float = _f(1.0, "weight of sum_k w_k (s (E_k - E_ref) / N_el)^2")
    density_weight: float = _f(
        1e7, "weight of sum_k w_k integral (rho_k - rho*)^2 dr / N_el (Bohr^-3); 1e7 makes a "
        "PBE-quality density (~5e-6) count like a PBE-quality energy (~70)",
    )  # fmt: skip
    n_cycles: int = _f(10, "SCF cycles (diagonalisations) unrolled per step")
    late_cycles: int = _f(4, "number of final cycles that carry loss weight")
    growth: str = _f(
        "linear", "cycle weights w_k over the late cycles: linear (1,2,..,L), uniform, last"
    )
    init_guess: str = _f(
        "minao", "start density: minao / atom / huckel / 1e (PySCF guesses) or reference (D*)"
    )
    diis_space: int = _f(8, "DIIS subspace (0: plain Roothaan steps)")
    damping: float = _f(0.0, "Fock damping")
    level_shift: float = _f(0.0, "virtual level shift (Eh)")
    conv_tol: float = _f(1e-6, "energy change of the last cycle for counting a run as converged")
    conv_tol_grad: float = _f(1e-3, "|G| at the final density for counting a run as converged")


@dataclasses.dataclass
class GradTerm:
    """Grassmannian gradient at D* (target 0) and at the stored perturbed densities D_k."""

    enabled: bool = _f(True, "switch the term on (honoured with loss.preset: custom only)")
    weight: float = _f(
        0.1, "weight of mean_k |s (G_theta(D_k) - G_ref(D_k))|_F^2 / N_el (PBE quality: ~600)"
    )
    dstar_weight: float = _f(1.0, "relative weight of the D* point (G_ref = 0) in the mean")
    n_points: int | None = _f(None, "perturbed points drawn per step (null: all stored)")


@dataclasses.dataclass
class HessTerm:
    """Hessian-vector products on stored unit probes: estimates |H_theta - H_ref|_F^2 / n_ov."""

    enabled: bool = _f(True, "switch the term on (honoured with loss.preset: custom only)")
    weight: float = _f(
        1e-3, "weight of mean_j |s (H_theta v_j - H_ref v_j)|^2 over unit probes (PBE quality: "
        "~3e5, mostly the exact-exchange response no pure functional has). Larger favours "
        "E_rho, density and excitation energies over the total energy: XCdiff, 28 steps, two "
        "seeds, vs E+rho: 1e-3 E_rho -45%, TDDFT -5..-15%, energy error x3-8 (docs/results.md)",
    )  # fmt: skip
    n_probes: int | None = _f(4, "probes drawn per step from the stored ones (null: all)")
    probe_chunk: int | None = _f(
        1, "nonlocal functionals on the whole-grid path: probes whose graphs the parameter "
        "backward rebuilds together (null: all); each adds its graph to the peak. EG-XC on grids "
        "above 4096 points takes all probes per chunk of points instead (dixc.xc.SEAM_MIN_POINTS)",
    )  # fmt: skip


@dataclasses.dataclass
class LossConfig:
    """DI-Loss terms (each switchable and weighted) and the preset that switches them."""

    preset: str = _f(
        "E+rho+grad+hess", "E+rho | E+rho+grad | E+rho+grad+hess | custom (enabled flags as set)"
    )
    energy_scale: float = _f(
        1000.0,
        "energies, gradients and Hessians enter the loss in units of Eh / energy_scale "
        "(default mEh) so that weights of order 1 balance the terms",
    )
    energy: EnergyTerm = _f(EnergyTerm, "energy at D*", factory=True)
    scf: SCFTerm = _f(SCFTerm, "unrolled SCF energy and density", factory=True)
    grad: GradTerm = _f(GradTerm, "Grassmannian gradients", factory=True)
    hess: HessTerm = _f(HessTerm, "Hessian-vector products", factory=True)


@dataclasses.dataclass
class OptimConfig:
    """Optimiser, schedule, clipping and weight averaging."""

    lr: float = _f(1e-3, "AdamW peak learning rate")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay")
    betas: list = _f(lambda: [0.9, 0.999], "AdamW betas", factory=True)
    eps: float = _f(1e-8, "AdamW epsilon")
    batch_size: int = _f(4, "molecules per optimiser step (sharded across DDP ranks)")
    epochs: int = _f(10, "passes over the training molecules")
    schedule: str = _f("cosine", "learning-rate schedule: cosine, linear or constant")
    warmup_steps: int = _f(10, "linear warm-up steps")
    min_lr_ratio: float = _f(0.05, "final learning rate / lr (cosine and linear)")
    clip_grad_norm: float | None = _f(1.0, "clip the gradient to this norm (null: no clipping)")
    ema_decay: float | None = _f(0.99, "EMA decay of the weights (null: no EMA, raw weights)")


@dataclasses.dataclass
class GuardConfig:
    """Guard rails: which steps are skipped instead of applied."""

    max_grad_norm: float | None = _f(
        None, "skip a step whose gradient norm exceeds this absolute value (null: no limit)"
    )
    grad_norm_factor: float | None = _f(
        100.0, "skip a step whose gradient norm exceeds this factor x the median of recent steps"
    )
    window: int = _f(50, "accepted steps in the running median of gradient norms")
    min_history: int = _f(10, "accepted steps before the relative test is active")
    max_consecutive_skips: int = _f(
        25, "stop with an error after this many skipped steps in a row (training diverged)"
    )


@dataclasses.dataclass
class ValidateConfig:
    """Validation on the held-out split, early stopping, best-model selection."""

    every_epochs: int = _f(1, "validate every this many epochs (and after the last)")
    max_cycle: int = _f(60, "SCF cycle limit of the self-consistent validation")
    conv_tol: float = _f(1e-8, "SCF energy tolerance (Eh) of the validation")
    init_guess: str = _f("minao", "validation SCF start density (PySCF guess name)")
    metric: str = _f("e_mae", "early-stopping / best-model metric: e_mae, rho_l2, e_mae_nscf")
    patience: int | None = _f(5, "stop after this many validations without improvement (null)")
    min_delta: float = _f(0.0, "improvement smaller than this does not count")


@dataclasses.dataclass
class RunConfig:
    """Run control: output, seeds, device, logging, checkpoints."""

    out: str | None = _f(None, "output directory (checkpoint.pt, *.safetensors, logs)")
    seed: int = _f(0, "seed of initialisation, data order and probe draws")
    device: str = _f("cpu", "cpu or cuda (DDP: cuda:<local rank>)")
    threads: int | None = _f(None, "torch threads per process (null: leave torch's default)")
    checkpoint_every: int = _f(50, "write OUT/checkpoint.pt every this many steps (and per epoch)")
    progress: bool = _f(True, "tqdm progress bar (rank 0)")
    tensorboard: bool = _f(True, "write TensorBoard events to OUT/tb")
    max_wall_s: float | None = _f(
        None, "stop this invocation (checkpointed, resumable) once training took this many "
        "seconds; a safety cap, the schedule still assumes all epochs",
    )  # fmt: skip
    max_steps: int | None = _f(
        None, "stop this invocation after this global step (checkpointed; the schedule is not "
        "changed, so --resume continues exactly)",
    )  # fmt: skip


@dataclasses.dataclass
class TrainConfig:
    """The whole training configuration (see ``docs/train.md``)."""

    data: DataConfig = _f(DataConfig, "reference data", factory=True)
    model: ModelConfig = _f(ModelConfig, "functional", factory=True)
    loss: LossConfig = _f(LossConfig, "DI-Loss", factory=True)
    optim: OptimConfig = _f(OptimConfig, "optimisation", factory=True)
    guard: GuardConfig = _f(GuardConfig, "guard rails", factory=True)
    validate: ValidateConfig = _f(ValidateConfig, "validation", factory=True)
    run: RunConfig = _f(RunConfig, "run control", factory=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---- construction -------------------------------------------------------------------------------
def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(
                f"dixc train: unknown config key {where}{key!r}; known keys under "
                f"{where or 'the top level'}: {', '.join(fields)} (see dixc train --print-config)"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"dixc train: config section {where}{key} must be a mapping")
            _apply(current, value, f"{where}{key}.")
        else:
            setattr(obj, key, _coerce(value, str(fields[key].type), f"{where}{key}"))


def _coerce(value: Any, type_text: str, name: str) -> Any:
    if value is None and type_text == "dict":  # model.arch_config: null -> no arguments
        return {}
    # YAML 1.1 reads "1e-4" (no dot) as a string: accept it where a float is expected
    if isinstance(value, str) and "float" in type_text:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"dixc train: {name} must be a number, got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool) and type_text.startswith("float"):
        return float(value)
    return value


def apply_preset(cfg: TrainConfig, preset: str) -> None:
    """Switches the loss terms of ``preset`` on/off (``custom`` leaves them as they are)."""
    if preset == CUSTOM:
        return
    if preset not in PRESETS:
        raise ValueError(
            f"dixc train: unknown loss preset {preset!r}; use one of "
            f"{', '.join([*PRESETS, CUSTOM])}"
        )
    for term, on in PRESETS[preset].items():
        getattr(cfg.loss, term).enabled = on


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=3e-4"`` -> ``{"optim": {"lr": 3e-4}}`` (a ``--set`` flag); the value is YAML."""
    if "=" not in text:
        raise ValueError(f"dixc train: --set expects section.key=value, got {text!r}")
    key, value = text.split("=", 1)
    out: Any = yaml.safe_load(value)
    for k in reversed(key.strip().split(".")):
        out = {k: out}
    return out


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` updated recursively by ``b`` (nested mappings merged, other values replaced)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(
    file_values: dict[str, Any] | None = None, overrides: list[dict[str, Any]] | None = None
) -> TrainConfig:
    """Builds the resolved config: defaults -> file values -> overrides, then the loss preset.

    Args:
        file_values: the YAML file's mapping (may be empty).
        overrides: nested mappings from the command line, applied in order.
    """
    values: dict[str, Any] = dict(file_values or {})
    for o in overrides or []:
        values = merge(values, o)
    cfg = TrainConfig()
    _apply(cfg, values, "")
    apply_preset(cfg, cfg.loss.preset)  # a preset decides the enabled flags; custom keeps them
    validate(cfg)
    return cfg


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """A config from a resolved mapping (e.g. the one stored in a checkpoint); no preset applied."""
    cfg = TrainConfig()
    _apply(cfg, values, "")
    validate(cfg)
    return cfg


def load_yaml(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        values = yaml.safe_load(fh) or {}
    if not isinstance(values, dict):
        raise ValueError(f"dixc train: config file {path} must hold a mapping at the top level")
    return values


def validate(cfg: TrainConfig) -> None:
    """Checks values that would otherwise fail late, with messages naming the fix."""
    o, lo, v = cfg.optim, cfg.loss, cfg.validate
    if lo.preset != CUSTOM and lo.preset not in PRESETS:
        raise ValueError(f"dixc train: unknown loss preset {lo.preset!r}")
    if not any(t.enabled for t in (lo.energy, lo.scf, lo.grad, lo.hess)):
        raise ValueError("dixc train: every loss term is disabled; enable at least one")
    if o.batch_size < 1 or o.epochs < 1:
        raise ValueError("dixc train: optim.batch_size and optim.epochs must be >= 1")
    if o.schedule not in ("cosine", "linear", "constant"):
        raise ValueError(
            f"dixc train: optim.schedule must be cosine/linear/constant, got {o.schedule!r}"
        )
    if lo.scf.growth not in ("linear", "uniform", "last"):
        raise ValueError(
            f"dixc train: loss.scf.growth must be linear/uniform/last, got {lo.scf.growth!r}"
        )
    if lo.scf.enabled and not (1 <= lo.scf.late_cycles <= lo.scf.n_cycles):
        raise ValueError("dixc train: need 1 <= loss.scf.late_cycles <= loss.scf.n_cycles")
    if v.metric not in ("e_mae", "rho_l2", "e_mae_nscf"):
        raise ValueError(
            f"dixc train: validate.metric must be e_mae/rho_l2/e_mae_nscf, got {v.metric!r}"
        )
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ValueError("dixc train: data.val_fraction must be in [0, 1)")
    if o.ema_decay is not None and not 0.0 <= o.ema_decay < 1.0:
        raise ValueError("dixc train: optim.ema_decay must be in [0, 1) or null")
    if cfg.model.init is None:
        from dixc import functionals

        try:
            functionals.check_config(cfg.model.arch, cfg.model.arch_config, "model.arch_config")
        except ValueError as err:
            raise ValueError(
                f"dixc train: {str(err).removeprefix('dixc: ')}. A config file's "
                "model.arch_config stays when --set model.arch changes the architecture and "
                "--set merges into it: --set model.arch_config=null clears it (the "
                "architecture's defaults), then --set model.arch_config.KEY=VALUE"
            ) from None


# ---- documentation -----------------------------------------------------------------------------
def documented_yaml(cfg: TrainConfig | None = None) -> str:
    """The config as YAML with every field's documentation as a comment."""
    cfg = cfg or TrainConfig()
    lines: list[str] = []

    def emit(obj: Any, indent: int) -> None:
        pad = "  " * indent
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            doc = f.metadata.get("doc", "")
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:  # {doc}")
                emit(value, indent + 1)
            else:
                text = json.dumps(value) if isinstance(value, (dict, list)) else yaml.safe_dump(
                    value, default_flow_style=True
                ).strip().removesuffix("...").strip()  # fmt: skip
                lines.append(f"{pad}{f.name}: {text}  # {doc}")

    emit(cfg, 0)
    return "\n".join(lines) + "\n"


def field_table() -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every field (used to write docs/train.md)."""
    rows: list[tuple[str, str, str]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + f.name + ".")
            else:
                rows.append((prefix + f.name, json.dumps(value), f.metadata.get("doc", "")))

    walk(TrainConfig(), "")
    return rows
