"""python -m bench [--json] [--full] [--smoke] [--out F]: `lth-sweep bench` from a checkout."""
import sys

from orchestrator.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
