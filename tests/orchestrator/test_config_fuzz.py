"""Property-based bad input: whatever the yaml holds, validation ends in a
ConfigError (one line) or a valid config, never another exception."""
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.config import ConfigError, validate
from orchestrator.grid import expand

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["digits", "cifar10", "none", "basic", "imp",
                                                          "resnet18", "val", "test", "cosine"]))


values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


known = st.sampled_from(["datasets", "fractions", "augmentations", "methods", "archs", "seeds", "train",
                         "imp", "model", "resources", "runtime", "selection", "arch", "images_per_class",
                         "val_fraction", "bogus"])


experiment = st.dictionaries(st.one_of(known, st.integers()), values, max_size=7)


documents = st.one_of(
    values,
    st.fixed_dictionaries({"experiments": st.dictionaries(st.one_of(st.text(min_size=1, max_size=6), st.integers(), st.booleans()), experiment,
                                                          min_size=1, max_size=2)},
                          optional={"defaults": experiment}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_validate_never_crashes(doc):
    try:
        cfg = validate(doc, "fuzz.yaml")
    except ConfigError as e:
        msg = str(e)
        assert msg.startswith("fuzz.yaml") and "\n" not in msg
        return
    for exp in cfg["experiments"].values():
        expand(exp)  # a config that validates must expand


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(documents)
def test_plan_exit_2_one_line(tmp_path, capsys, doc):
    p = tmp_path / "f.yaml"
    p.write_text(yaml.safe_dump(doc))
    name = next(iter(doc["experiments"]), "x") if isinstance(doc, dict) and isinstance(doc.get("experiments"), dict) else "x"
    rc = main(["plan", "-c", str(p), "-e", str(name), "--json"])
    out, err = capsys.readouterr()
    assert rc in (0, 2)
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


TOKENS = ["plan", "run", "status", "query", "--json", "-e", "--experiment", "tiny", "quickstart", "nope",
          "-c", "--config", "experiments.yaml", "missing.yaml", "--storage", "store", "s3:/bad", "--name",
          "../up", "/abs", "ok_name", "--address", "--num-cpus", "--num-gpus", "-1", "0", "2", "x",
          "--max-concurrent", "--sql", "select 1", "select * from nope", "--compare", "--winning-tickets",
          "--format", "csv", "xml", "\x00", "--max-failures", "", "-", "--"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(TOKENS), max_size=7))
def test_cli_arguments_never_crash(tmp_path_factory, monkeypatch, capsys, argv):
    d = tmp_path_factory.mktemp("cli")
    from tests.helpers import TINY_YAML
    (d / "experiments.yaml").write_text(TINY_YAML)
    monkeypatch.chdir(d)
    import orchestrator.tune.run as tune_run
    started = []
    monkeypatch.setattr(tune_run, "run", lambda *a, **k: started.append(a) or 0)  # never start Ray here
    try:
        rc = main(argv)
    except SystemExit as e:  # --help
        rc = e.code
    out, err = capsys.readouterr()
    assert rc in (0, 2), (argv, rc, err)
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert not started
        written = [p for p in d.rglob("*") if p.name != "experiments.yaml"]
        assert not [p for p in written if "trials" in p.parts], (argv, written)
