"""Frozen trial specs and their canonical hash.

A trial is fully described by one `TrialSpec`: one dataclass per concern
(data, model, training, pruning, evaluation), as OpenLTH does. `trial_id` is
the sha256 of the spec's canonical JSON with every field that is at its
default left out, so adding a new field with a default never changes the id
(and so never moves) an existing trial's storage folder.

Things that change *how* a trial runs but not *what* it computes (data root, checkpoint
cadence, evaluation cadence, device) live in `RunOptions` and are never hashed.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from workers.migrate import legacy_cell_fields, upgrade_spec
from workers.specfield import Rule, spec_field  # noqa: F401 (the spec's users import Rule from here)

ID_LEN = 16  # hex chars of sha256: 64 bits, collision-free for any real sweep

_POSITIVE = Rule(float, lo=0, lo_open=True)
_UNIT = Rule(float, lo=0, hi=1, lo_open=True)


# DataSpec fields that are a dataset's own parameters (DatasetInfo.params), not
# the subset's: what the loader takes, what a fused group must share, what the
# report shows per row. A dataset with a new parameter adds its field here.
DATASET_PARAMS = ("imbalance",)


@dataclass(frozen=True)
class DataSpec:
    dataset: str = spec_field(rule=Rule(str, choices="workers.data:DATASETS"), axis="datasets", column=True,
                              shown=True, help="The dataset to train and test on, read from its real on-disk "
                              "layout under the data root (`digits` ships with scikit-learn; required).")
    imbalance: Optional[float] = spec_field(None, rule=_UNIT, axis="imbalances", column=True,
                                            help="cifar100_lt only: the imbalance factor n_min / n_max of its "
                                                 "long tail (class c keeps int(500 f^(c/99)) training images).")
    fraction: Optional[float] = spec_field(None, rule=_UNIT, axis="fractions", column=True, shown=True,
                                           help="The training subset as a class-stratified fraction of the "
                                                "training split, fixed by seed (this or images_per_class).")
    images_per_class: Optional[int] = spec_field(None, rule=Rule(int, lo=1), axis="images_per_class",
                                                 column=True, shown=True,
                                                 help="The training subset as this many images per class, "
                                                      "fixed by seed (this or fractions).")
    augmentation: str = spec_field("none", rule=Rule(str, choices="workers.data:AUGMENTATIONS"),
                                   axis="augmentations", column=True, shown=True,
                                   help="The augmentation of training batches, on the trial's device: `basic` "
                                        "crops and flips where labels allow; the others build on it.")

    def params(self) -> dict:
        """The dataset's own parameters that this spec sets (passed to its loader)."""
        return {f: getattr(self, f) for f in DATASET_PARAMS if getattr(self, f) is not None}


@dataclass(frozen=True)
class ModelSpec:
    arch: str = spec_field("resnet18", rule=Rule(str, choices="workers.models:ARCHS"), axis="archs",
                           scalar="arch", column=True, shown=True,
                           help="The network (`arch:` one for every trial, `archs:` a grid axis); "
                                "`vgg16_paper` and `mobilenetv2_cifar` are the paper's released layouts.")
    width: float = spec_field(1.0, rule=_POSITIVE, yaml=("model", "width"), column=True,
                              help="Multiplies every channel count of the network (pretrained inits need 1).")
    init: str = spec_field("random", rule=Rule(str, choices="workers.models.inits:INITS"), yaml=("model", "init"),
                           column=True, help="Where the weights start: `random` (by the init scheme), or "
                           "pretrained `imagenet` (torchvision's file) or `simclr` (runtime.init_path) over it.")
    # torchvision is the default so that every lineage from before this field keeps its id.
    init_scheme: str = spec_field("torchvision", rule=Rule(str, choices="workers.models.variants:INIT_SCHEMES"),
                                  axis="init_schemes", column=True,
                                  help="How random weights start: `torchvision` (Kaiming-normal fan_out convs), "
                                       "`pytorch` (PyTorch's own) or `paper` (the released code's, per network).")


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = spec_field(200, rule=Rule(int, lo=1), yaml=("train", "epochs"),
                             help="The final epoch of every round: round 0 trains this many epochs.")
    batch_size: int = spec_field(100, rule=Rule(int, lo=1), yaml=("train", "batch_size"),
                                 help="Training images per SGD step.")
    lr: float = spec_field(0.1, rule=_POSITIVE, yaml=("train", "lr"), help="SGD's learning rate at epoch 0.")
    momentum: float = spec_field(0.9, rule=Rule(float, lo=0, hi=1), yaml=("train", "momentum"),
                                 help="SGD's momentum (reset at every rewind).")
    weight_decay: float = spec_field(0.0005, rule=Rule(float, lo=0), yaml=("train", "weight_decay"),
                                     help="SGD's weight decay, on every parameter (BatchNorm and biases too).")
    schedule: str = spec_field("cosine", rule=Rule(str, choices="workers.train:SCHEDULES"),
                               yaml=("train", "schedule"), help="The learning rate over a round's epochs, "
                               "set per epoch: `cosine` (to 0 at `epochs`) or `constant`.")
    bf16: bool = spec_field(True, rule=Rule(bool), yaml=("train", "bf16"),
                            help="Train under bfloat16 autocast on CUDA (a CPU always trains in fp32).")
    channels_last: bool = spec_field(True, rule=Rule(bool), yaml=("train", "channels_last"),
                                     help="Feed batches as channels_last on CUDA (a CPU always gets NCHW).")


RETRAIN = ("rest", "paper_code")


@dataclass(frozen=True)
class PruneSpec:
    method: str = spec_field("imp", rule=Rule(str, choices="workers.methods:METHODS"), axis="methods",
                             column=True, shown=True,
                             help="What the lineage runs: `imp`, or IMP with one named change (workers/methods/).")
    rounds: int = spec_field(16, rule=Rule(int, lo=0), yaml=("imp", "rounds"),
                             help="Pruning rounds after the dense round 0.")
    rate: float = spec_field(0.2, rule=Rule(float, lo=0, hi=1, lo_open=True, hi_open=True), yaml=("imp", "rate"),
                             help="The share of the remaining prunable weights pruned per round: round k "
                                  "has density (1 - rate)^k.")
    rewind_epoch: int = spec_field(2, rule=Rule(int, lo=0), yaml=("imp", "rewind_epoch"),
                                   help="Every round after the first restarts from round 0's full state after "
                                        "this many epochs (below train.epochs).")
    prunable: str = spec_field("conv", rule=Rule(str, choices="workers.pruning:PRUNABLE_SETS"),
                               yaml=("imp", "prunable"), help="The weights IMP prunes: every Conv2d weight "
                               "(`conv`), or those and the Linear weights (`conv+linear`).")
    # Why both exist: docs/imp.md, differences from the released code.
    retrain: str = spec_field("rest", rule=Rule(str, choices="workers.spec:RETRAIN"), yaml=("imp", "retrain"),
                              help="What a round after a rewind trains: `rest` (from rewind_epoch to epochs) "
                                   "or `paper_code` (all epochs again, as the released code does).")


# Images per class held out of the training split (outside the subset) to
# pick the winning ticket. 50 per class is the paper's headline training size
# (1% of CIFAR-10), so there the selection budget equals the training budget
# instead of dwarfing it; at 10 classes it is 500 images, a standard error of
# about 2 points on an accuracy near 70%, the size of the differences between
# neighbouring IMP rounds that selection has to resolve.
DEFAULT_VAL_PER_CLASS = 50


@dataclass(frozen=True)
class EvalSpec:
    """How every round is measured. Which round is the winning ticket is
    decided at query time (`--select val|test`), never here: both protocols
    read the same lineages."""
    val_per_class: int = spec_field(DEFAULT_VAL_PER_CLASS, rule=Rule(int, lo=0), yaml=("eval", "val_per_class"),
                                    help="Training images per class held out of the subset, on which every "
                                         "round records val_acc: the winning ticket's selection budget.")
    # Short rounds' running statistics lag the weights, handicapping whichever round trained least.
    bn_recalibrate: bool = spec_field(False, rule=Rule(bool), yaml=("eval", "bn_recalibrate"), column=True,
                                      help="Recompute BatchNorm's running statistics over the training subset "
                                           "(no augmentation) before each evaluation.")


@dataclass(frozen=True)
class TrialSpec:
    data: DataSpec
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    seed: int = spec_field(0, rule=Rule(int, lo=0), axis="seeds", column=True,
                           help="The training seed (subset, held-out images, init, data order, augmentations). "
                                "A list, or {adaptive: {start, step, max, effect, margin, alpha}}: seeds added "
                                "per cell while its claim is open.")

    # --- identity -------------------------------------------------------
    def canonical(self) -> dict:
        """Nested dict of the non-default fields only (the hashed form)."""
        return _non_default(self)

    # Cached: a spec is frozen, and planning 10,000 trials asked for each id 16
    # times (grouping, costs, unit ids), each a canonical JSON of the whole spec.
    @functools.cached_property
    def _canonical_json(self) -> str:
        # json.dumps(self.canonical(), sort_keys=True, separators=(",", ":")), byte
        # for byte, assembled from each sub-spec's own canonical JSON, which is
        # cached on it: a grid's trials share their sub-specs (orchestrator/grid.py).
        items = []
        for name, default in _defaults(TrialSpec):
            v = getattr(self, name)
            if default is not dataclasses.MISSING and v == default:
                continue
            if _is_spec(v):
                text = v.__dict__.get("_canonical_json_text")
                if text is None:
                    nd = _non_default(v)
                    text = "" if nd == {} else json.dumps(nd, sort_keys=True, separators=(",", ":"))
                    object.__setattr__(v, "_canonical_json_text", text)
                if text:
                    items.append((name, text))
            else:
                items.append((name, json.dumps(_non_default(v))))
        return "{" + ",".join(f'"{k}":{t}' for k, t in sorted(items)) + "}"

    def canonical_json(self) -> str:
        return self._canonical_json

    @functools.cached_property
    def trial_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:ID_LEN]

    # --- (de)serialisation ---------------------------------------------
    def to_dict(self) -> dict:
        """Full form, every field (what is stored beside a trial)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialSpec":
        d = upgrade_spec(d)  # a spec as stored, in any version's form
        kinds = {f.name: f.type for f in fields(cls)}
        parts: dict[str, Any] = {}
        for name, sub in (("data", DataSpec), ("model", ModelSpec), ("train", TrainSpec),
                          ("prune", PruneSpec), ("eval", EvalSpec)):
            if name in d:
                parts[name] = sub(**d[name])
        if "seed" in d:
            parts["seed"] = int(d["seed"])
        unknown = set(d) - set(kinds)
        if unknown:
            raise ValueError(f"unknown trial spec keys: {sorted(unknown)}")
        return cls(**parts)

    # --- grid cell ---------------------------------------------------------
    def cell(self) -> dict:
        """The grid cell: every non-default spec field except the seed. Seeds of
        one cell are the replicates whose paired gains are averaged."""
        c = self.canonical()
        c.pop("seed", None)
        return c

    def cell_json(self) -> str:
        return cell_key(self.cell())[0]

    @property
    def cell_id(self) -> str:
        return cell_key(self.cell())[1]

    @functools.cached_property
    def num_rounds(self) -> int:
        """Committed rounds of a finished lineage: round 0 (dense) + `rounds`."""
        return num_rounds({"prune": {"rounds": self.prune.rounds}})  # not to_dict(): 10,000 asdict() cost seconds


@dataclass(frozen=True)
class RunOptions:
    """How a lineage runs; never part of its identity."""
    data_root: Optional[str] = spec_field(None, rule=Rule(str), scalar="data_root",
                                          help="Where datasets are read from (unset: $LTH_DATA_ROOT, else "
                                               "~/.cache/lth-sweep/data).")
    # Neither checkpoint cadence changes the result: epochs are reseeded from
    # (seed, round, epoch), so resuming at an epoch is exact.
    checkpoint_every: int = spec_field(0, rule=Rule(int, lo=0), yaml=("runtime", "checkpoint_every"),
                                       help="A rolling mid-round checkpoint every N epochs (0: never).")
    checkpoint_interval_s: float = spec_field(600.0, rule=Rule(float, lo=0), yaml=("runtime", "checkpoint_interval_s"),
                                              help="A mid-round checkpoint every S seconds of training (0: never).")
    eval_every: int = spec_field(0, rule=Rule(int, lo=0), yaml=("runtime", "eval_every"),
                                 help="Also record val/test accuracy every N epochs in the round's history "
                                      "(0: only at the end of each round).")
    device: Optional[str] = None  # None: CUDA when present, else CPU
    max_device_images: int = spec_field(2_000_000, rule=Rule(int, lo=0), yaml=("runtime", "max_device_images"),
                                        help="A training split of at most this many images is held on the "
                                             "training device; a larger one stays in host memory.")
    # The first epoch pays the compile. The backend is for tests.
    compile: bool = spec_field(False, rule=Rule(bool), yaml=("runtime", "compile"),
                               help="torch.compile the training and evaluation forward (for long rounds on CUDA).")
    compile_backend: str = "inductor"
    # None: 1 (no fusion) on CPU, where fusion measured slower at 32 px (docs/performance.md).
    fuse: Optional[int] = spec_field(None, rule=Rule(int, lo=1), yaml=("runtime", "fuse"),
                                     help="At most this many same-shape lineages train as one fused program on "
                                          "one device (unset: 8 for trials that ask for a GPU, 1 on CPU).")
    # loop is each member's own conv: the solo kernels and, on CPU, the solo bits.
    fuse_conv: str = spec_field("auto", rule=Rule(str, choices="workers.fused_net:CONV_STRATEGIES"),
                                yaml=("runtime", "fuse_conv"), help="How fused convolutions run: `grouped` "
                                "(one conv with groups K), `loop` (each member's own) or `auto` (grouped on "
                                "CUDA and up to 16 px on CPU, else loop).")
    # Train in float64 (not a yaml option: the equivalence tests, where fused and
    # solo must agree to 1e-12, and reference runs; ~10x slower).
    float64: bool = False
    # Continue a lineage whose committed rounds ran in another precision than
    # this attempt would (bf16 on a GPU, then fp32 on a CPU node); without it
    # the lineage stops (workers/context.py PrecisionChange). Not a yaml
    # option: `lth-sweep run --allow-precision-change`, a decision per run.
    allow_precision_change: bool = False
    init_path: Optional[str] = spec_field(None, rule=Rule(str), yaml=("runtime", "init_path"),
                                          help="model.init's weights: torchvision's file or folder for `imagenet` "
                                               "(unset: the torch hub cache), the state-dict file for `simclr`.")
    # Evaluations after the lineage: the yaml's `analysis:` mapping as sorted
    # (key, value) pairs, e.g. (("cka", True), ("probe", ("cifar100",))). Each
    # registered evaluation (workers/evaluations/) declares its key, what it
    # accepts and its default, so a new one needs no field here; the keys are
    # checked against that registry where it is loaded (orchestrator/config.py,
    # workers.evaluations.wanted): importing it here would be an import cycle.
    # Pairs rather than a dict keep the options hashable and round-trip through
    # dataclasses.asdict -> RunOptions(**d) as they are.
    analysis: tuple = field(default=(), metadata={"section": "analysis"})

    def __post_init__(self):
        object.__setattr__(self, "analysis", _analysis_pairs(self.analysis))

    def analysis_value(self, key: str, default: Any = None) -> Any:
        """The `analysis.<key>` value these options were given (lists as tuples), else `default`."""
        return dict(self.analysis).get(key, default)


def _analysis_pairs(given) -> tuple:
    """A mapping or (key, value) pairs (after a JSON round trip: lists) ->
    sorted (key, value) pairs whose list values are tuples."""
    pairs = given.items() if isinstance(given, Mapping) else given
    return tuple(sorted(((str(k), tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in pairs),
                        key=lambda kv: kv[0]))


def num_rounds(spec: dict) -> int:
    """Committed rounds of a finished lineage, from a spec as stored (a dict):
    round 0 (dense) + `prune.rounds`. The one place this rule is written."""
    return int(spec["prune"]["rounds"]) + 1


def cell_key(cell: dict) -> tuple[str, str]:
    """(canonical JSON, id) of a cell dict."""
    text = json.dumps(cell, sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()[:ID_LEN]


def cell_fields(cell: dict) -> dict[str, Any]:
    """A cell (TrialSpec.cell()) as flat {field: value} with every default filled
    in; field names are unique across the sub-specs (dataset, width, epochs...)."""
    out: dict[str, Any] = {}
    for part, cls in _SUBSPECS.items():
        sub = cell.get(part, {})
        for f, (name, default) in zip(fields(cls), _defaults(cls)):
            v = sub.get(name, None if default is dataclasses.MISSING else default)
            if "float" in str(f.type) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)  # the canonical form spells 1.0 as 1
            out[name] = v
    return {**out, **legacy_cell_fields(cell, _SUBSPECS)}


_DEFAULTS: dict[type, list[tuple[str, Any]]] = {}


def _defaults(cls: type) -> list[tuple[str, Any]]:
    """(field name, default or MISSING) per field, computed once per class:
    `plan` hashes every trial of a grid, so this runs 10,000s of times."""
    if cls not in _DEFAULTS:
        out = []
        for f in fields(cls):
            if f.default is not dataclasses.MISSING:
                out.append((f.name, f.default))
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out.append((f.name, f.default_factory()))  # type: ignore[misc]
            else:
                out.append((f.name, dataclasses.MISSING))
        _DEFAULTS[cls] = out
    return _DEFAULTS[cls]


def _is_spec(obj: Any) -> bool:
    # dataclasses.is_dataclass, without its generality: planning 10,000 trials calls this ~10^5 times.
    return hasattr(type(obj), "__dataclass_fields__")


def _non_default(obj: Any) -> Any:
    if _is_spec(obj):
        cached = obj.__dict__.get("_non_default")
        if cached is not None:  # a sub-spec shared by many trials (grid.expand interns them)
            return dict(cached)
        out = {}
        for name, default in _defaults(type(obj)):
            v = getattr(obj, name)
            if default is not dataclasses.MISSING and v == default:
                continue
            nv = _non_default(v)
            if nv == {} and _is_spec(v):
                continue
            out[name] = nv
        if type(obj) is not TrialSpec:  # frozen: its non-default fields never change
            object.__setattr__(obj, "_non_default", out)
            return dict(out)
        return out
    if isinstance(obj, float) and obj.is_integer():
        # 1.0 and 1 are the same grid point whichever way the yaml spells it.
        return int(obj)
    return obj


_SUBSPECS = {"data": DataSpec, "model": ModelSpec, "train": TrainSpec, "prune": PruneSpec, "eval": EvalSpec}


@functools.lru_cache(maxsize=None)
def spec_fields() -> tuple[tuple[str, dataclasses.Field], ...]:
    """(part, field) of every TrialSpec field, in order: part is the sub-spec
    ("data", "model", ...) or "" for the seed. (The classes never change: computed once.)"""
    out = [(part, f) for part, cls in _SUBSPECS.items() for f in fields(cls)]
    return tuple(out + [("", f) for f in fields(TrialSpec) if f.name == "seed"])


def field_value(spec: "TrialSpec", part: str, name: str):
    return getattr(getattr(spec, part) if part else spec, name)


COLUMNS = [f.name for _, f in spec_fields() if f.metadata.get("column")]  # results columns from the spec
SHOWN = [f.name for _, f in spec_fields() if f.metadata.get("shown")]    # every comparison table shows these
