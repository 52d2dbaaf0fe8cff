"""Character n-gram models with interpolated Kneser-Ney smoothing, counted with numpy.

  lm = ngram.fit(train_ids, vocab_size=65, max_order=9)   # every order 1..9 at once
  bits = ngram.bits(lm, ids)           # [9, N - 1]: -log2 p(ids[t+1] | ids[..t]), order n = row n-1
  probs = ngram.distributions(lm, ids, order=7)   # [N, V]: each position's next-token distribution

Interpolated Kneser-Ney (Kneser & Ney 1995, in the interpolated form of Chen & Goodman
1998, one discount per order, D = n1 / (n1 + 2 n2), or 0.5 where no gram is seen once or
no gram twice). An order-n model uses raw counts at
order n and continuation counts (how many distinct tokens precede a gram) below it:

  p_n(w | h) = (max(c(hw) - D, 0) + D * N1+(h .) * p_{n-1}(w | h')) / c(h),   c(h) > 0
             = p_{n-1}(w | h'),                                             c(h) = 0
  p_0(w) = 1 / V

where h' is h without its oldest token and c(h) = sum_w c(hw). Every order shares the
continuation chain below it, so all nine models score a text in one pass.

A gram of k tokens is one int64, its tokens as base-V digits (oldest first), so counting
is `np.unique` and a lookup `np.searchsorted`; orders whose codes would overflow int64
(V^n >= 2^62: order 8 for a 256-byte vocabulary) are not offered.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from charlm.errors import CharLMError


@dataclasses.dataclass
class Table:
    """The grams of one order and one kind of count, and their histories' totals."""

    codes: np.ndarray  # int64[G], sorted: gram codes
    counts: np.ndarray  # float64[G]
    discount: float
    hist_codes: np.ndarray  # int64[H], sorted: codes of the histories (gram // V)
    hist_totals: np.ndarray  # float64[H]: c(h)
    hist_types: np.ndarray  # float64[H]: N1+(h .)


@dataclasses.dataclass
class NGram:
    vocab_size: int
    max_order: int
    raw: list[Table]  # raw[k - 1]: order k, raw counts
    cont: list[Table]  # cont[k - 1]: order k < max_order, continuation counts


def max_order_for(vocab_size: int) -> int:
    """The highest order whose codes fit in int64 with room to spare."""
    return max(1, int(62 / math.log2(max(vocab_size, 2))))


def _codes(ids: np.ndarray, k: int, v: int) -> np.ndarray:
    """int64[len(ids) - k + 1]: the code of the k-gram starting at each position."""
    n = len(ids) - k + 1
    code = np.zeros(max(n, 0), np.int64)
    for j in range(k):
        code = code * v + ids[j:j + n]
    return code


def _table(codes: np.ndarray, counts: np.ndarray, v: int) -> Table:
    n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
    discount = float(n1 / (n1 + 2 * n2)) if n1 and n2 else 0.5  # too few grams to estimate
    hist, start = np.unique(codes // v, return_index=True)
    totals = np.add.reduceat(counts, start) if len(codes) else np.zeros(0)
    types = np.diff(np.append(start, len(codes))).astype(np.float64)
    return Table(codes, counts.astype(np.float64), discount, hist, totals, types)


def fit(ids, vocab_size: int, max_order: int = 9) -> NGram:
    """Counts every order 1..max_order of the token ids `ids` (a training text)."""
    ids = np.asarray(ids, np.int64)
    if max_order < 1:
        raise CharLMError(f'an n-gram model needs order 1 or more, got {max_order}')
    if max_order > max_order_for(vocab_size):
        raise CharLMError(f'order {max_order} n-grams of a {vocab_size}-token vocabulary do '
                          f'not fit in int64 codes: at most {max_order_for(vocab_size)}')
    if len(ids) < max_order + 1:
        raise CharLMError(f'{len(ids)} training tokens are too few for {max_order}-grams')
    raw, cont = [], []
    grams = [np.unique(_codes(ids, k, vocab_size), return_counts=True)
             for k in range(1, max_order + 1)]
    for k in range(1, max_order + 1):
        codes, counts = grams[k - 1]
        raw.append(_table(codes, counts, vocab_size))
        if k < max_order:
            # N1+(. g): the distinct (k+1)-grams ending in g; drop each one's oldest token.
            suffixes = grams[k][0] % vocab_size ** k
            codes, counts = np.unique(suffixes, return_counts=True)
            cont.append(_table(codes, counts, vocab_size))
    return NGram(vocab_size, max_order, raw, cont)


def _lookup(sorted_codes: np.ndarray, values: np.ndarray, query: np.ndarray,
            valid: np.ndarray) -> np.ndarray:
    """values[i] where sorted_codes[i] == query, else 0 (also where not `valid`)."""
    if not len(sorted_codes):
        return np.zeros(query.shape)
    i = np.minimum(np.searchsorted(sorted_codes, query), len(sorted_codes) - 1)
    return np.where(valid & (sorted_codes[i] == query), values[i], 0.0)


def _level(table: Table, gram: np.ndarray, hist: np.ndarray, valid: np.ndarray,
           lower: np.ndarray) -> np.ndarray:
    """One step of the recursion for the grams `gram` with histories `hist` (same shape)."""
    c = _lookup(table.codes, table.counts, gram, valid)
    total = _lookup(table.hist_codes, table.hist_totals, hist, valid)
    types = _lookup(table.hist_codes, table.hist_types, hist, valid)
    d = table.discount
    seen = total > 0
    p = (np.maximum(c - d, 0) + d * types * lower) / np.where(seen, total, 1.0)
    return np.where(seen, p, lower)


def bits(lm: NGram, ids) -> np.ndarray:
    """float64[max_order, N - 1]: -log2 p(ids[t + 1] | ids[:t + 1]) of each order (row n - 1),
    each history the up to n - 1 tokens before, cut at the start of `ids`."""
    ids = np.asarray(ids, np.int64)
    v = lm.vocab_size
    n = len(ids) - 1
    target = ids[1:]
    out = np.zeros((lm.max_order, max(n, 0)))
    lower = np.full(n, 1.0 / v)
    hist = np.zeros(n, np.int64)  # code of the k - 1 tokens before each target
    t = np.arange(n)
    for k in range(1, lm.max_order + 1):
        valid = t - (k - 2) >= 0  # the history needs tokens t-k+2..t
        gram = hist * v + target
        out[k - 1] = -np.log2(_level(lm.raw[k - 1], gram, hist, valid, lower))
        if k < lm.max_order:
            lower = _level(lm.cont[k - 1], gram, hist, valid, lower)
            older = ids[np.clip(t - k + 1, 0, None)]  # the token that extends the history
            hist = np.where(t - k + 1 >= 0, older * v ** (k - 1) + hist, 0)
    return out


def _dense_counts(table: Table, hist: np.ndarray, valid: np.ndarray, v: int) -> np.ndarray:
    """float64[P, V]: the counts of each history's V grams (0 where not `valid`), read as
    the run of sorted codes each history spans: two searches a history, not V."""
    lo = np.searchsorted(table.codes, hist * v)
    hi = np.where(valid, np.searchsorted(table.codes, hist * v + v), lo)
    lens = hi - lo
    rows = np.repeat(np.arange(len(hist)), lens)
    idx = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(lo, lens)
    counts = np.zeros((len(hist), v))
    counts[rows, table.codes[idx] % v] = table.counts[idx]
    return counts


def distributions(lm: NGram, ids, order: int, positions=None) -> np.ndarray:
    """float64[P, V]: order `order`'s distribution of the token after each position of
    `positions` (default: every position of `ids`), from the tokens up to it."""
    if not 1 <= order <= lm.max_order:
        raise CharLMError(f'order {order} is not in this model (1..{lm.max_order})')
    ids = np.asarray(ids, np.int64)
    v = lm.vocab_size
    t = np.arange(len(ids)) if positions is None else np.asarray(positions)
    p = np.full((len(t), v), 1.0 / v)
    hist = np.zeros(len(t), np.int64)
    for k in range(1, order + 1):
        table = lm.raw[k - 1] if k == order else lm.cont[k - 1]
        counts = _dense_counts(table, hist, t - (k - 2) >= 0, v)
        total = counts.sum(1, keepdims=True)
        types = (counts > 0).sum(1, keepdims=True)
        d = table.discount
        seen = total > 0
        p = np.where(seen, (np.maximum(counts - d, 0) + d * types * p)
                     / np.where(seen, total, 1.0), p)
        if k < order:
            older = ids[np.clip(t - k + 1, 0, None)]
            hist = np.where(t - k + 1 >= 0, older * v ** (k - 1) + hist, 0)
    return p


def versus(train_ids, vocab_size: int, ids, model_bits, model_guess, classes_NxK,
           class_names, page_positions, max_order: int = 9) -> dict:
    """N-grams of every order counted on `train_ids`, scored on `ids` beside a model whose
    bits and top guesses for ids[1:] are `model_bits` and `model_guess`: bits/char per order;
    the best order's top guesses against the model's, overall and by the class of the
    predicted character (`classes_NxK`, bool, one row per predicted character); and the best
    order's top 5 after each of `page_positions` ('page_top_ids', 'page_top_p')."""
    order = min(max_order, max_order_for(vocab_size))
    lm = fit(np.asarray(train_ids), vocab_size, order)
    per_char = bits(lm, ids)
    mean = per_char.mean(1)
    best = int(np.argmin(mean)) + 1
    ends = [*range(0, len(ids) - 1, 20_000), len(ids) - 1]  # in pieces: [P, V] floats each
    guess = np.concatenate([distributions(lm, ids, best, np.arange(a, b)).argmax(1)
                            for a, b in zip(ends[:-1], ends[1:], strict=True)])
    target = np.asarray(ids)[1:]
    ngram_right, model_right = guess == target, np.asarray(model_guess) == target
    by_class = {}
    for k, name in enumerate(class_names):
        m = classes_NxK[:, k]
        by_class[name] = {
            'count': int(m.sum()),
            'model_bits': float(model_bits[m].mean()) if m.any() else None,
            'ngram_bits': float(per_char[best - 1][m].mean()) if m.any() else None,
            'model_right': float(model_right[m].mean()) if m.any() else None,
            'ngram_right': float(ngram_right[m].mean()) if m.any() else None,
            'model_only': int((model_right & ~ngram_right & m).sum()),
            'ngram_only': int((ngram_right & ~model_right & m).sum())}
    dist = distributions(lm, ids, best, page_positions)
    top = np.argsort(-dist, 1)[:, :5]
    return {'orders': np.arange(1, order + 1), 'bits_per_char': mean,
            'model_bits_per_char': float(np.mean(model_bits)), 'best_order': best,
            'model_right': float(model_right.mean()), 'ngram_right': float(ngram_right.mean()),
            'model_only': int((model_right & ~ngram_right).sum()),
            'ngram_only': int((ngram_right & ~model_right).sum()), 'by_class': by_class,
            'train_chars': len(train_ids),
            'page_top_ids': top, 'page_top_p': np.take_along_axis(dist, top, 1)}
