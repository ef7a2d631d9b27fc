"""The profiles: the full one shows progress bars on long cells, the CI one (tests, book) keeps them out."""

import pytest

from ddpm_lib.profile import get_profile


def test_progress_bars_in_the_full_profile_only():
    assert get_profile("full").progress is True
    assert get_profile("ci").progress is False  # no widget output in the tests' and the book's notebooks


def test_an_unknown_profile_is_refused_with_the_names_allowed():
    with pytest.raises(ValueError, match="full"):
        get_profile("huge")
