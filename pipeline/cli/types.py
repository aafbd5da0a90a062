"""The command line's argument types: each value checked as it is parsed, a bad one refused in one line."""

from __future__ import annotations

import argparse
import re

from pipeline.datasets import DATASETS
from pipeline.segment import BACKENDS


class UsageError(Exception):
    """Bad command-line input; becomes one line on stderr and exit code 2."""



class Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none (None, False, empty) or says it itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, "", [], argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text



class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=Formatter, **kwargs)

    def error(self, message: str):  # one line instead of argparse's usage block
        raise UsageError(f"{self.prog}: {message} (see --help)")



def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value



def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value



def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value



def unit_float(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value



def device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text



def dataset_name(text: str) -> str:
    """A registered dataset name: a typo is refused at every stage, not taken for a dataset without masks yet."""
    if text not in DATASETS:
        raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; known: {', '.join(DATASETS)}")
    return text



def segmenter(text: str) -> str:
    if text not in BACKENDS and not re.fullmatch(r"[\w.]+:\w+", text):
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(BACKENDS)} or module:Class, got {text!r}")
    return text



def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers ≥ 0, got {text!r}")
    return values



def coverage_range(text: str) -> tuple[float, float]:
    try:
        low, high = (unit_float(v) for v in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH between 0 and 1, got {text!r}") from None
    if low > high:
        raise argparse.ArgumentTypeError(f"LOW must not exceed HIGH, got {text!r}")
    return low, high
