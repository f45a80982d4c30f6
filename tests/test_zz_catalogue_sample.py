"""The default run's sample of the mistake catalogue: one entry per task (see `sample` in
tests/test_catalogue.py, which says why these entries and why they are representative).

The entries are graded in a background process that tests/test_catalogue.py starts as soon as collection ends
(its `start_early`); this file is named to sort last, because pytest runs files in name order, so that by the time its
tests ask for the verdicts the grading has overlapped the rest of the run. Run alone, it grades the sample
itself.
"""

import pytest

from test_catalogue import SAMPLE, SAMPLE_RUN, SAMPLE_TIMEOUT_S, check_entry


@pytest.mark.timeout(SAMPLE_TIMEOUT_S + 60)
@pytest.mark.parametrize("entry", SAMPLE, ids=[e.id for e in SAMPLE])
def test_catalogue_sample(entry):
    """A fixed sample of the catalogue, one entry per task: the correct alternatives are accepted, the
    mistakes rejected with their diagnosis"""
    results = SAMPLE_RUN.results()
    assert entry.id in results, f"{entry.id} was not graded"
    check_entry(entry, results[entry.id])
