"""Runs the onnx package's node test cases through `autofuse.backend`.

`run_cases()` collects the cases in memory
(`onnx.backend.test.case.node.collect_testcases`), runs each one and compares
every output with the case's own rtol/atol, as the onnx backend test runner does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np


@dataclass(frozen=True)
class CaseResult:
    """One node test case: passed or not, which path ran, and why it failed."""

    name: str
    op_type: str
    passed: bool
    mode: str | None = None
    error: str = ""


def collect_cases(op_type: str | None = None) -> list[Any]:
    """The onnx package's node test cases (all 1,884 of onnx 1.23 by default)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return list(collect_testcases(op_type))


def assert_close(expected: Any, actual: Any, rtol: float, atol: float) -> None:
    """Compares like `onnx.backend.test.runner.Runner.assert_similar_outputs`."""
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            raise AssertionError(f"expected a sequence of {len(expected)}, got {type(actual).__name__}")
        for e, a in zip(expected, actual):
            assert_close(e, a, rtol, atol)
        return
    if expected is None:
        if actual is not None:
            raise AssertionError("expected an empty optional")
        return
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != expected {expected.shape}")
    if expected.dtype == object:
        np.testing.assert_array_equal(actual, expected)
        return
    if actual.dtype != expected.dtype:
        raise AssertionError(f"dtype {actual.dtype} != expected {expected.dtype}")
    if expected.dtype.kind not in "biufc":  # ml_dtypes floats: compare as float32
        output_rtol = max(rtol, 2**-6) if expected.dtype.name == "bfloat16" else rtol
        np.testing.assert_allclose(actual.astype(np.float32), expected.astype(np.float32),
                                   rtol=output_rtol, atol=atol)
        return
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _from_proto(value: Any) -> Any:
    """A TensorProto (how cases give float8/int4/... data) as numpy, like the onnx runner loads it."""
    from onnx import TensorProto, numpy_helper

    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else value


def run_case(case: Any) -> CaseResult:
    """Prepares and runs one case on every data set; never raises."""
    from autofuse import backend

    op_type = case.model.graph.node[-1].op_type if case.model.graph.node else "?"
    mode = None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            rep = backend.prepare(case.model)
            for inputs, expected in case.data_sets:
                inputs, expected = [_from_proto(v) for v in inputs], [_from_proto(v) for v in expected]
                outputs = rep.run(inputs)
                mode = rep.last_mode if mode in (None, "jit") else mode
                if len(outputs) != len(expected):
                    raise AssertionError(f"{len(outputs)} outputs, expected {len(expected)}")
                for e, a in zip(expected, outputs):
                    assert_close(e, a, case.rtol, case.atol)
    except Exception as error:  # a failing case is a record, not a crash
        text = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"
        return CaseResult(case.name, op_type, False, mode, text)
    return CaseResult(case.name, op_type, True, mode)


def run_cases(
    cases: Iterable[Any] | None = None,
    progress: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Runs every case (or the given ones) and returns one result per case."""
    results = []
    for case in collect_cases() if cases is None else cases:
        result = run_case(case)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def main(argv: list[str] | None = None) -> int:
    """`python -m autofuse.conformance [--ops A,B] [--show-failures]`: prints the count."""
    import argparse
    import collections

    import autofuse  # noqa: F401  (x64 and the op registry)

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--ops", default="", help="comma-separated op types (default: all cases)")
    parser.add_argument("--show-failures", action="store_true")
    parser.add_argument("--write-known-failures", metavar="FILE",
                        help="write the failing case names (with the reason) to FILE")
    args = parser.parse_args(argv)
    cases = collect_cases()
    if args.ops:
        wanted = set(args.ops.split(","))
        cases = [c for c in cases if c.model.graph.node and c.model.graph.node[-1].op_type in wanted]
    results = run_cases(cases)
    passed = [r for r in results if r.passed]
    if args.show_failures:
        for r in results:
            if not r.passed:
                print(f"FAIL {r.name}: {r.error}")
    if args.write_known_failures:
        with open(args.write_known_failures, "w") as out:
            out.write("# onnx node test cases autofuse fails today: case name, then the reason.\n")
            out.write("# Regenerate with: python -m autofuse.conformance --write-known-failures FILE\n")
            for r in sorted(results, key=lambda r: r.name):
                if not r.passed:
                    out.write(f"{r.name}  {r.error}\n")
    by_op = collections.Counter(r.op_type for r in passed)
    modes = collections.Counter(r.mode for r in passed)
    print(f"per op: {dict(sorted(by_op.items()))}")
    print(f"modes: {dict(modes)}")
    print(f"conformance: {len(passed)} / {len(results)} node cases pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
