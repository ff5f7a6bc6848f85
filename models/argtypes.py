"""argparse value types shared by every `bookfeed` subcommand: a bad value is one readable line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = ["fraction", "non_negative", "number", "port", "positive", "positive_int"]


def number(kind: Callable[[str], Any], check: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse type: parse with `kind`, refuse NaN/infinity and values failing `check` (message: `rule`)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or not check(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return parse


positive = number(float, lambda v: v > 0, "must be positive")
non_negative = number(float, lambda v: v >= 0, "must be >= 0")
fraction = number(float, lambda v: 0 <= v <= 1, "must be in [0, 1]")
positive_int = number(int, lambda v: v > 0, "must be a positive integer")
port = number(int, lambda v: 0 <= v <= 65535, "must be in 0..65535")
