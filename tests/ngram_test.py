"""charlm.ngram: interpolated Kneser-Ney against a plain-Python reading of its equations."""

import collections
import math

import numpy as np
import pytest

from charlm import ngram
from charlm.errors import CharLMError

TEXT = 'the cat sat on the mat. the dog sat on the log; a cat, a dog.\n' * 3 + 'zebra'


def _ids(text, chars):
    return np.array([chars.index(c) for c in text])


def reference_kn(train: str, v: int, order: int, history: str, w: str, chars: str) -> float:
    """p(w | history) by the textbook recursion, with dicts."""
    def raw(k):
        return collections.Counter(train[i:i + k] for i in range(len(train) - k + 1))

    def cont(k):
        return collections.Counter(g[1:] for g in raw(k + 1))

    def discount(counts):
        n1 = sum(1 for c in counts.values() if c == 1)
        n2 = sum(1 for c in counts.values() if c == 2)
        return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5

    def p(k, h, top):  # h: all the history there is
        if k == 0:
            return 1 / v
        counts = raw(k) if top else cont(k)
        lower = p(k - 1, h, False)
        if len(h) < k - 1:
            return lower
        h = h[len(h) - (k - 1):]
        total = sum(c for g, c in counts.items() if g[:-1] == h)
        if not total:
            return lower
        types = sum(1 for g in counts if g[:-1] == h)
        d = discount(counts)
        return (max(counts.get(h + w, 0) - d, 0) + d * types * lower) / total

    return p(order, history, True)


def test_probabilities_equal_the_textbook_recursion_and_sum_to_one():
    chars = sorted(set(TEXT) | {'Q'})  # Q: in the vocabulary, never in training
    v = len(chars)
    train, test = TEXT[:-40], 'the cat sat on a Q log.'
    lm = ngram.fit(_ids(train, chars), v, max_order=5)
    ids = _ids(test, chars)
    got = ngram.bits(lm, ids)
    assert got.shape == (5, len(test) - 1)
    for order in (1, 2, 3, 5):
        dist = ngram.distributions(lm, ids, order)
        np.testing.assert_allclose(dist.sum(1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(-np.log2(dist[np.arange(len(ids) - 1), ids[1:]]),
                                   got[order - 1], rtol=1e-12)
        for t in (0, 1, 3, 9, 14, len(test) - 2):
            want = reference_kn(train, v, order, test[:t + 1], test[t + 1], chars)
            assert got[order - 1, t] == pytest.approx(-math.log2(want), rel=1e-12), (order, t)
    assert np.all(np.isfinite(got))  # the unseen Q too, through the uniform floor


def test_higher_orders_read_a_repetitive_text_better():
    chars = sorted(set(TEXT))
    ids = _ids(TEXT, chars)
    lm = ngram.fit(ids, len(chars), max_order=6)
    per_order = ngram.bits(lm, ids[:120]).mean(1)
    assert list(per_order) == sorted(per_order, reverse=True)


def test_bad_orders_are_errors():
    with pytest.raises(CharLMError, match='at most 7'):
        ngram.fit(np.zeros(100, int), 256, max_order=9)
    with pytest.raises(CharLMError, match='too few'):
        ngram.fit(np.zeros(5, int), 3, max_order=9)
    with pytest.raises(CharLMError, match='order 1 or more, got 0'):
        ngram.fit(np.zeros(50, int), 3, max_order=0)
