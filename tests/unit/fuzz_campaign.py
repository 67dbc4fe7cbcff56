"""bench/fuzz.py, which holds the fuzz targets and strategies, loaded once for the
bounded CI runs in tests/unit/test_fuzz_*.py (bench/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _campaign() -> ModuleType:
    name = "ferry_bench_fuzz"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


fuzz = _campaign()
