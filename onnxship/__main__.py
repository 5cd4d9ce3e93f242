"""`python -m onnxship ...`, which is what `torchrun ... -m onnxship train ...` runs on every rank.

Only the CLI is imported here (its module top is torch-free)."""

from __future__ import annotations

import sys

from onnxship.cli import main

if __name__ == "__main__":
    sys.exit(main())
