"""The mutation check's list (benchmarks/mutants.py) stays in step with the code: each mutant's text occurs
exactly once in its file, changes it, and names test files that exist."""

import pytest

from benchmarks.mutants import MUTANTS, REPO, Mutant, check_applies


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_applies_once_to_the_current_code_and_names_existing_tests(mutant):
    assert check_applies(mutant) is None
    assert mutant.old != mutant.new
    assert mutant.tests and all((REPO / t).is_file() for t in mutant.tests)


def test_a_stale_or_ambiguous_mutant_is_reported():
    missing = Mutant("x", "", "pretrain/convex.py", "no such text anywhere", "y", ())
    assert "occurs 0 times" in check_applies(missing)
    twice = Mutant("x", "", "pretrain/convex.py", "import", "y", ())
    assert "must be once" in check_applies(twice)
    assert "does not exist" in check_applies(Mutant("x", "", "no/such/file.py", "a", "b", ()))
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


def test_a_failed_test_kills_a_mutant_and_a_collection_error_does_not():
    from benchmarks.mutants import outcome

    assert outcome(0, "5 passed in 3s") == "SURVIVED"
    assert outcome(1, "1 failed, 4 passed in 3s") == "killed"
    assert outcome(2, "Interrupted: 1 failed, 2 passed") == "killed"  # xdist's -x
    assert outcome(2, "Interrupted: 1 error during collection") == "error (pytest exit 2)"
    assert outcome(4, "usage") == "error (pytest exit 4)"
