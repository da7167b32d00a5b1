"""What every ``pca`` command shares: how a failure is reported."""

from __future__ import annotations

import sys
from typing import NoReturn


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"pca: error: {message}", file=sys.stderr)
    raise SystemExit(code)
