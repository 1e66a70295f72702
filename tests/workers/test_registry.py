"""workers.registry: one way to register what the yaml can name, and one error for a name nobody registered."""
from __future__ import annotations

import re
from collections.abc import Mapping

import pytest

from workers.registry import Registry, UnknownName


def one_line_unknown(kind: str, name: str, known) -> str:
    """The exact message a registry of `kind` gives for `name` (a regex of it)."""
    return "^" + re.escape(f"unknown {kind} {name!r}; known: {', '.join(known)}") + "$"


def test_register_and_get_in_registration_order():
    reg = Registry("fruit")
    apple = object()
    assert reg.register("pear", 1) == 1
    assert reg.register("apple", apple) is apple
    assert reg.get("pear") == 1 and reg.get("apple") is apple and reg["apple"] is apple
    assert list(reg) == ["pear", "apple"]  # registration order, not sorted
    assert reg.get("plum", None) is None and reg.get("plum", 7) == 7


def test_decorator_form_registers_and_returns_what_it_wraps():
    reg = Registry("step")

    @reg.register("double")
    def double(x):
        return 2 * x

    @reg.register("Box")
    class Box:
        pass

    assert double(3) == 6  # the decorated function itself, not a wrapper
    assert reg.get("double") is double and reg.get("Box") is Box


def test_a_name_is_registered_once():
    reg = Registry("loss")
    first = object()
    reg.register("ce", first)
    with pytest.raises(ValueError, match="loss 'ce' is registered twice"):
        reg.register("ce", object())
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("ce")(lambda: None)
    assert reg.get("ce") is first
    reg.register("ce", first)  # the same entry again (a module imported twice) is harmless
    assert len(reg) == 1


def test_unknown_name_is_one_line_listing_the_known_ones():
    reg = Registry("widget")
    with pytest.raises(UnknownName, match=r"^unknown widget 'a'; known: \(none\)$"):
        reg.get("a")
    reg.register("b", 1)
    reg.register("a", 2)
    with pytest.raises(UnknownName, match=one_line_unknown("widget", "zz", ["b", "a"])) as e:
        reg.get("zz")
    assert "\n" not in str(e.value)
    with pytest.raises(UnknownName, match="unknown widget"):
        reg["zz"]  # indexing goes through get: the same error, not a bare KeyError
    assert isinstance(e.value, LookupError) and not isinstance(e.value, KeyError)
    with pytest.raises(UnknownName, match=r"unknown widget \['a'\]"):
        reg.get(["a"])  # an unhashable name (a yaml list where a name belongs) is an unknown name


def test_custom_error_type():
    class Oops(Exception):
        pass

    reg = Registry("dataset", error=Oops)
    reg.register("digits", 1)
    with pytest.raises(Oops, match=one_line_unknown("dataset", "mnist", ["digits"])):
        reg.get("mnist")
    with pytest.raises(Oops):
        reg["mnist"]


def test_mapping_behaviour():
    reg = Registry("method")
    reg.register("imp", {"control": False})
    reg.register("random_prune", {"control": True})
    assert isinstance(reg, Mapping) and not isinstance(reg, dict)
    assert "imp" in reg and "nope" not in reg and ["imp"] not in reg  # unhashable: not in, no TypeError
    assert len(reg) == 2 and sorted(reg) == ["imp", "random_prune"]
    assert dict(reg.items()) == {"imp": {"control": False}, "random_prune": {"control": True}}
    assert list(reg.keys()) == ["imp", "random_prune"] and len(list(reg.values())) == 2
    assert reg.where(lambda m: m["control"]) == ["random_prune"]
    assert not hasattr(reg, "__setitem__") and not hasattr(reg, "pop")  # read-only: register is the one way in
    assert "imp" in repr(reg) and "method" in repr(reg)


# --- every registry the yaml can name gives its own one-line error, of the type its callers catch ---

def test_unknown_method():
    from workers.methods import METHODS, get_method
    with pytest.raises(ValueError, match=one_line_unknown("method", "nope", METHODS)):
        get_method("nope")
    assert isinstance(METHODS, Registry) and "imp" in METHODS


def test_unknown_dataset():
    from workers.data import DATASETS, DataError, dataset_info, load_dataset, train_size
    for lookup in (dataset_info, load_dataset, train_size):
        with pytest.raises(DataError, match=one_line_unknown("dataset", "nope", DATASETS)):
            lookup("nope")
    assert isinstance(DATASETS, Registry) and DATASETS.get("digits").info.name == "digits"


def test_unknown_augmentation():
    from workers.data import AUGMENTATIONS, DataError, dataset_info, make_augment
    from workers.data.augment import reference_transform
    info = dataset_info("digits")
    for build in (make_augment, reference_transform):
        with pytest.raises(DataError, match=one_line_unknown("augmentation", "mixup", AUGMENTATIONS)):
            build("mixup", info)
    assert isinstance(AUGMENTATIONS, Registry)


def test_unknown_arch_variant_and_init_scheme():
    import torch

    from workers.models import ARCHS, build_model
    from workers.models.inits import load_init
    from workers.models.variants import INIT_SCHEMES, VARIANTS, apply_init_scheme, check_variant
    with pytest.raises(ValueError, match=one_line_unknown("arch", "vit", ARCHS)):
        build_model("vit", num_classes=2, in_channels=1, image_size=8)
    with pytest.raises(ValueError, match=one_line_unknown("arch", "vit", ARCHS)):
        load_init(torch.nn.Linear(1, 1), "imagenet", arch="vit")
    with pytest.raises(ValueError, match=one_line_unknown("variant", "bogus", VARIANTS)):
        check_variant("bogus")
    with pytest.raises(ValueError, match=one_line_unknown("init scheme", "xavier", INIT_SCHEMES)):
        apply_init_scheme(torch.nn.Linear(1, 1), "xavier", "resnet18")
    assert all(isinstance(r, Registry) for r in (ARCHS, VARIANTS, INIT_SCHEMES))
    assert list(VARIANTS) == ["standard", "full_conv", "harmonic"]
    assert list(INIT_SCHEMES) == ["torchvision", "pytorch", "paper"]


def test_unknown_loss():
    from workers.losses import LOSSES, get_loss
    with pytest.raises(ValueError, match=one_line_unknown("loss", "hinge", LOSSES)):
        get_loss("hinge")
    with pytest.raises(ValueError, match=one_line_unknown("loss", "hinge", LOSSES)):
        LOSSES["hinge"]  # how the Trainer looks its method's loss up
    assert isinstance(LOSSES, Registry)


def test_unknown_tracker():
    from orchestrator.trackers import TRACKERS, TrackerError, check
    with pytest.raises(TrackerError, match=one_line_unknown("tracker", "neptune", TRACKERS)):
        check(["neptune"])
    assert isinstance(TRACKERS, Registry) and list(TRACKERS) == ["tensorboard", "mlflow", "wandb"]
