"""Run `lth-sweep bench` from a checkout: python bench/run.py [--json] [--full] [--out F]."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.cli import main  # noqa: E402

sys.exit(main(["bench", *sys.argv[1:]]))
