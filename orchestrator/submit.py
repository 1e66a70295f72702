"""Driver entry for `ray submit`: `lth-sweep run`, joined to the running cluster.

    ray submit --tmux docker/cluster.yaml orchestrator/submit.py -- -c ~/lth-sweep/experiments.yaml -e NAME --storage s3://bucket/prefix

`ray submit` copies this one file to the head node and runs it there with
`python`, so it must not rely on the rest of the source tree being next to
it: everything comes from the lth-sweep installed in the image (`pip install .`,
docker/Dockerfile). It adds `--address auto` (join the cluster this node
belongs to) unless the arguments already carry an `--address`, and is
otherwise exactly `lth-sweep run`: same flags, same output, same exit status,
and re-running the same command resumes.
"""
import os
import sys


def _argv(args):
    if any(a == "--address" or a.startswith("--address=") for a in args):
        return ["run", *args]
    return ["run", "--address", "auto", *args]


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(here, "__init__.py")):
        # Run as `python orchestrator/submit.py` from a checkout: Python put the
        # package folder itself on sys.path, where its modules (config, grid,
        # status...) would shadow same-named top-level modules. Import the
        # package as a package instead.
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        from orchestrator.cli import main as cli_main
    except ImportError as e:
        print(f"lth-sweep: error: lth-sweep is not installed on this node ({e}); "
              "use the image from docker/Dockerfile or `pip install .` from the source", file=sys.stderr)
        return 2
    return cli_main(_argv(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
