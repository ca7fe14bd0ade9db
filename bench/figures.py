"""
The figures each part of `make bench` measured, kept in bench/RESULTS.json
(one key per part: "wrk", "sidebyside", "burst") so that bench/floors.py
can set every floor of issue 10 beside its measured value in one table.
Stdlib only.
"""

import json
import time
from pathlib import Path

PATH = Path(__file__).resolve().parent / "RESULTS.json"


def load():
    try:
        return json.loads(PATH.read_text())
    except (OSError, ValueError):
        return {}


def save(part, figures, quick=False):
    """Replace the figures of one part (with the time and whether the run
    was a --quick smoke test, whose figures judge no floor)."""
    everything = load()
    everything[part] = {"taken": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "quick": quick, **figures}
    PATH.write_text(json.dumps(everything, indent=1, sort_keys=True) + "\n")
