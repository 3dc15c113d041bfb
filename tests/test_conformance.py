"""The onnx package's node test cases through autofuse.backend.

Every case runs on every test run. A case that fails and is not listed in
`conformance_known_failures.txt` is a regression and fails the suite; the
pass count is printed at the end of the run.
"""
from __future__ import annotations

from pathlib import Path

from autofuse.conformance import run_cases

KNOWN_FAILURES = Path(__file__).with_name("conformance_known_failures.txt")
REQUIRED_PASSES = 1250
SUMMARY: list[str] = []


def known_failures() -> set[str]:
    lines = KNOWN_FAILURES.read_text().splitlines() if KNOWN_FAILURES.exists() else []
    return {line.split()[0] for line in lines if line.strip() and not line.startswith("#")}


def test_onnx_node_conformance():
    results = run_cases()
    failed = {r.name: r.error for r in results if not r.passed}
    passed = len(results) - len(failed)
    jit = sum(1 for r in results if r.passed and r.mode == "jit")
    SUMMARY.append(
        f"conformance: {passed} / {len(results)} onnx node test cases pass "
        f"({jit} as one XLA executable, {passed - jit} op by op)"
    )
    print(SUMMARY[-1])
    regressions = sorted(set(failed) - known_failures())
    assert not regressions, "regressions:\n" + "\n".join(f"{n}: {failed[n]}" for n in regressions[:50])
    assert passed >= REQUIRED_PASSES
