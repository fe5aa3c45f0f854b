"""pytest imports test modules by basename (no __init__.py): two with one name in tests/unit and
tests/lab stop `make test` at collection. Caught here, in a second, instead of in CI."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique_across_suites():
    names = [path.name for suite in ("unit", "lab") for path in (TESTS / suite).glob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
