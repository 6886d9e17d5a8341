"""The neuron lists of a decoded token (which neurons its selection picks, which activations are non-zero) against
numpy, over lengths around the 4-value vectors and 64-neuron words, unaligned starts, lists cut at every cap, and the
values where a comparison can go wrong (NaN, signed zeros, infinities, subnormals)."""

from __future__ import annotations

import numpy as np
import pytest

from turbosparse.binding import nonzero_list, pick_list

LENGTHS = [0, 1, 3, 4, 5, 63, 64, 65, 127, 129, 1000]
SPECIAL = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45, 0.5], dtype=np.float32)


def values(n: int, seed: int) -> np.ndarray:
    """n values, about a tenth of them above 1.0, with the special values sprinkled in."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32) * 0.8
    where = rng.random(n) < 0.15
    x[where] = rng.choice(SPECIAL, int(where.sum()))
    return x


def picked(x: np.ndarray, t: float, above: bool) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return x > np.float32(t) if above else x >= np.float32(t)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("above", [False, True], ids=["at_least", "above"])
@pytest.mark.parametrize("t", [1.0, 0.0, -0.0, -np.inf, np.inf, -1e30, np.nan])
def test_pick_list_in_lists_of_every_cap(n: int, above: bool, t: float) -> None:
    x = values(n, seed=n)
    for start in sorted({0, min(1, n), min(5, n), n // 2}):
        expected = np.flatnonzero(picked(x[start:], t, above)) + start
        for cap in (1, 7, 64, 256, 5000):
            got, at = [], start
            while at < n:
                chunk, nxt = pick_list(x, t, above, at, n, cap)
                assert 0 < len(chunk) <= cap or (len(chunk) == 0 and nxt == n)
                assert nxt > at
                assert len(chunk) == cap or nxt == n  # a list is short only where the range ends
                got.append(chunk)
                at = nxt
            np.testing.assert_array_equal(np.concatenate(got) if got else np.empty(0, np.int32), expected)


def test_pick_list_stops_at_the_end_of_its_range() -> None:
    x = np.ones(300, dtype=np.float32)
    chunk, at = pick_list(x, 0.5, False, 10, 130, 1000)
    np.testing.assert_array_equal(chunk, np.arange(10, 130))
    assert at == 130
    chunk, at = pick_list(x, 0.5, False, 10, 130, 64)  # full mid-word: the next list starts at the next neuron
    np.testing.assert_array_equal(chunk, np.arange(10, 74))
    assert at == 74
    with pytest.raises(ValueError, match="cap >= 1"):  # a list of none could never move on
        pick_list(x, 0.5, False, 10, 130, 0)


@pytest.mark.parametrize("n", LENGTHS)
def test_nonzero_list(n: int) -> None:
    a = values(n, seed=100 + n)
    a[np.abs(a) < 0.6] = 0.0  # most activations are zero
    idx, val = nonzero_list(a)
    expected = np.flatnonzero(a != 0)  # NaN counts as non-zero, -0.0 does not
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(val, a[expected])
