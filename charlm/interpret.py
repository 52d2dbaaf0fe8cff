"""Inside a trained character model: its gates against character classes, its units against
text features, how saturated its gates are, and where it beats an n-gram model.

  tables = interpret.analyse(run, text)   # what `charlm.inspect` writes; run.inspect(text)

After Karpathy, Johnson and Fei-Fei, "Visualizing and Understanding Recurrent Networks"
(2015). The text is cut into S contiguous streams read side by side, each from a zero state
with the carry passed on from chunk to chunk, so a position sees its stream's whole past.
Each layer's cell is stepped with the trained parameters (Flax's nn.LSTMCell / nn.GRUCell,
whose parameter names charlm's LSTM and GRU layers keep, with capture_intermediates; charlm's
own cells sow their gates), and the top layer's outputs through the model's head must give
the model's own logits: the capture is checked against `model.apply` on the first chunk.

Shapes: N characters; S streams of L steps; H units; K character classes; V tokens.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from charlm import activations, data, tokenizers
from charlm import model as model_lib
from charlm import ngram as ngram_lib
from charlm.errors import CharLMError

# Gate name -> (input Dense, hidden Dense) of the Flax cell; charlm's cells sow theirs.
GATES, SOWN = activations.GATES, activations.SOWN
CLASSES = ('word interior', 'space', 'word onset', 'punctuation', 'newline',
           'speaker newline', 'uppercase', 'sentence boundary', 'speaker turn')
FEATURES = ('in quotes', 'in brackets', 'line position', 'speaker line', 'word onset',
            'uppercase', 'vowel')
# The tutorials' claims: (name, gate, class A, class B or None for every other position,
# sign of mean(A) - mean(B) that the claim makes; 0: any difference).
CLAIMS = (
    ('forget gates reset at sentence boundaries', 'forget', 'sentence boundary', None, -1),
    ('input gates fire at word onsets', 'input', 'word onset', None, +1),
    ('the output gate shows patterns at speaker turns (NAME: and its newline)', 'output',
     'speaker turn', None, 0),
    ('... and the speaker newline differs from other newlines', 'output', 'speaker newline',
     'newline', 0),
)
MIN_CHARS = 200
LOW, HIGH = 0.1, 0.9  # saturation thresholds (the paper's)
SMALL = 0.02  # a difference of mean gate values below this holds only 'but small'
PAGE_CHARS = 5000
SPEAKER = re.compile(r"^[A-Z][A-Za-z' .,-]{0,40}:$")


def gate_names(cell: str) -> tuple[str, ...]:
    if cell not in GATES and cell not in SOWN:
        raise CharLMError(f"a {cell!r} model has no gates to inspect: use an lstm, gru, mingru, "
                          'minlstm, lnlstm or mogrifier model')
    return tuple(GATES[cell]) if cell in GATES else SOWN[cell]


def check_text(tokenizer, text: str) -> str:
    """The text as the model reads it, one symbol a token; bad input is one line."""
    if not text:
        raise CharLMError('the text is empty')
    missing = tokenizer.unknown(text)
    if missing and not getattr(tokenizer, 'folds', False):  # a folding one reads them as U+FFFD
        raise CharLMError('the text has characters the model never saw in training: '
                          f'{tokenizers._show(missing)}')
    symbols = text.encode('utf-8').decode('latin-1') if tokenizer.kind == 'byte' else text
    if len(symbols) < MIN_CHARS:
        raise CharLMError(f'the text has {len(symbols)} characters: inspect needs at least '
                          f'{MIN_CHARS} to say anything')
    return symbols


# ------------------------------------------------------------------ text: classes, features


def _speaker_lines(text: str) -> list[bool]:
    lines = text.split('\n')
    return [bool(SPEAKER.match(ln)) and (i == 0 or not lines[i - 1].strip())
            for i, ln in enumerate(lines)]


def classes(text: str) -> np.ndarray:
    """bool[N, K]: the classes (CLASSES) of each character, as the model reads it."""
    c = np.array(list(text))
    alpha = np.char.isalpha(c)
    prev_alpha = np.concatenate([[False], alpha[:-1]])
    newline = c == '\n'
    speaker = np.zeros(len(c), bool)  # the newline ending a speaker's NAME: line
    colon = np.zeros(len(c), bool)  # that line's colon
    ends = np.flatnonzero(newline)
    for line_end, is_speaker in zip(ends, _speaker_lines(text), strict=False):
        if is_speaker:
            speaker[line_end] = colon[line_end - 1] = True
    stop = np.isin(c, ['.', '!', '?'])
    after_stop = np.concatenate([[False], stop[:-1]]) & np.isin(c, [' ', '\n'])
    punct = ~np.char.isalnum(c) & ~np.char.isspace(c)
    return np.stack([alpha & prev_alpha, c == ' ', alpha & ~prev_alpha, punct,
                     newline & ~speaker, speaker, np.char.isupper(c), stop | after_stop,
                     speaker | colon], axis=1)


def features(text: str) -> np.ndarray:
    """float64[N, len(FEATURES)]: each text feature after reading each character."""
    c = np.array(list(text))
    quotes = np.cumsum(c == '"') % 2 == 1
    depth = np.zeros(len(c))
    d = 0
    for i, ch in enumerate(text):
        d = d + 1 if ch in '([' else max(d - 1, 0) if ch in ')]' else d
        depth[i] = d
    newline = c == '\n'
    line_start = np.maximum.accumulate(np.where(np.concatenate([[True], newline[:-1]]),
                                                np.arange(len(c)), 0))
    speaker_line = np.zeros(len(c), bool)
    start = 0
    for line, is_speaker in zip(text.split('\n'), _speaker_lines(text), strict=True):
        speaker_line[start:start + len(line)] = is_speaker
        start += len(line) + 1
    cls = classes(text)
    return np.stack([quotes, depth > 0, np.arange(len(c)) - line_start, speaker_line,
                     cls[:, CLASSES.index('word onset')], cls[:, CLASSES.index('uppercase')],
                     np.isin(np.char.lower(c), list('aeiou'))], axis=1).astype(np.float64)


# ------------------------------------------------------------------ capture


@functools.partial(jax.jit, static_argnames=('model',))
def _chunk(model, params, carry, tokens_SxT, targets_SxT, classes_SxTxK):
    """T steps of S streams: the per-layer reductions the tables need, the states, and each
    position's log2 p of its target and top-5 next tokens."""
    x = jnp.take(params['embed']['embedding'], tokens_SxT.T, axis=0)  # TxSxE
    cls = jnp.swapaxes(classes_SxTxK, 0, 1)
    valid = cls[..., -1]  # TxS: the last class column marks real (not padded) positions
    new_carry, layers = [], []
    for i in range(len(model.hidden_sizes)):
        c, gates, state, x = activations.step_layer(model, params, i, carry[i], x)
        states = ({'cell': state, 'hidden': x} if model.cell in model_lib.LSTM_CARRY
                  else {'hidden': x})
        new_carry.append(c)
        layers.append({
            'mean': {g: v.mean(-1).T for g, v in gates.items()},  # SxT
            'class_sums': {g: jnp.einsum('tsk,tsh->kh', cls, v) for g, v in gates.items()},
            'left': {g: jnp.einsum('ts,tsh->h', valid, (v < LOW).astype(v.dtype))
                     for g, v in gates.items()},
            'right': {g: jnp.einsum('ts,tsh->h', valid, (v > HIGH).astype(v.dtype))
                      for g, v in gates.items()},
            'states': {k: jnp.swapaxes(v, 0, 1) for k, v in states.items()}})  # SxTxH
    logits = model.output(params, jnp.swapaxes(x, 0, 1))  # an adaptive softmax's: log p
    logp = jax.nn.log_softmax(logits) / jnp.log(2.0)
    target = jnp.take_along_axis(logp, jnp.maximum(targets_SxT, 0)[..., None], -1)[..., 0]
    top_p, top_ids = jax.lax.top_k(jnp.exp2(logp), 5)
    return tuple(new_carry), layers, {'bits': -target, 'top_p': top_p, 'top_ids': top_ids,
                                      'logits': logits}


@functools.partial(jax.jit, static_argnames=('model',))
def _model_logits(model, params, tokens_SxT):
    return model.apply({'params': params}, model.init_carry(tokens_SxT.shape[0]), tokens_SxT)[1]


def capture(model, params, ids: np.ndarray, cls_NxK: np.ndarray, streams: int | None = None,
            chunk: int = 128) -> dict:
    """The text's ids read as S streams: per-layer reductions, states [N, H] and predictions.

    Returns {'layers': [{'mean': {gate: [N]}, 'class_sums': {gate: [K+1, H]}, 'left'/'right':
    {gate: [H]} (steps below LOW / above HIGH), 'states': {'cell'/'hidden': [N, H]}}],
    'bits': [N - 1], 'top_p', 'top_ids': [N, 5], 'streams', 'logits_error'}.
    """
    n = len(ids)
    s = streams or int(np.clip(n // 400, 1, 128))
    length = -(-n // s)
    t = min(chunk, length)
    steps = -(-length // t) * t
    pad = s * steps - n
    tok = np.concatenate([ids, np.zeros(pad, ids.dtype)]).reshape(s, steps).astype(np.int32)
    tgt = np.concatenate([ids[1:], -np.ones(pad + 1, np.int64)]).reshape(s, steps)
    valid = np.concatenate([np.ones(n), np.zeros(pad)])[:, None]
    cls = np.concatenate([np.concatenate([cls_NxK, np.zeros((pad, cls_NxK.shape[1]))]), valid],
                         1).reshape(s, steps, -1).astype(np.float32)
    carry = model.init_carry(s)
    parts, error = [], 0.0
    for start in range(0, steps, t):
        sl = slice(start, start + t)
        carry, layers, pred = _chunk(model, params, carry, tok[:, sl], tgt[:, sl], cls[:, sl])
        if start == 0:  # the check that the stepped cells are the trained model
            want = np.asarray(_model_logits(model, params, tok[:, sl]))
            error = float(np.abs(np.asarray(pred['logits']) - want).max()
                          / max(1.0, np.abs(want).max()))
        del pred['logits']
        parts.append(jax.device_get((layers, pred)))

    def joined(pick):  # chunks' SxT... arrays -> positions (stream-major), padding cut
        a = np.concatenate([pick(p) for p in parts], axis=1)
        return a.reshape(s * steps, *a.shape[2:])[:n]

    out_layers = []
    for i, first in enumerate(parts[0][0]):
        layer = {'mean': {g: joined(lambda p, i=i, g=g: p[0][i]['mean'][g])
                          for g in first['mean']},
                 'states': {k: joined(lambda p, i=i, k=k: p[0][i]['states'][k])
                            for k in first['states']}}
        for key in ('class_sums', 'left', 'right'):
            layer[key] = {g: sum(p[0][i][key][g] for p in parts) for g in first[key]}
        out_layers.append(layer)
    return {'layers': out_layers, 'bits': joined(lambda p: p[1]['bits'])[:n - 1],
            'top_p': joined(lambda p: p[1]['top_p']), 'top_ids': joined(lambda p: p[1]['top_ids']),
            'streams': s, 'logits_error': error}


# ------------------------------------------------------------------ statistics


def block_bootstrap(values_N: np.ndarray, masks_NxK: np.ndarray, block: int = 250,
                    resamples: int = 1000, seed: int = 0):
    """Mean of `values` over each mask, and the block bootstrap's resampled means [R, K]:
    blocks of `block` neighbouring positions resampled whole, as characters are not
    independent."""
    nb = -(-len(values_N) // block)
    pad = nb * block - len(values_N)
    v = np.concatenate([values_N, np.zeros(pad)]).reshape(nb, block)
    m = np.concatenate([masks_NxK, np.zeros((pad, masks_NxK.shape[1]), bool)]).reshape(
        nb, block, -1).astype(np.float64)
    sums, counts = np.einsum('bt,btk->bk', v, m), m.sum(1)
    idx = np.random.default_rng(seed).integers(0, nb, (resamples, nb))
    w = np.zeros((resamples, nb))
    np.add.at(w, (np.arange(resamples)[:, None], idx), 1.0)
    with np.errstate(invalid='ignore', divide='ignore'):
        return sums.sum(0) / counts.sum(0), (w @ sums) / (w @ counts)


def gate_tables(cap: dict, cls_NxK: np.ndarray, cell: str) -> dict:
    """Per layer and gate: each class's mean with its 95% interval, and the claims."""
    names = gate_names(cell)
    k = len(CLASSES)
    masks = np.concatenate([cls_NxK, ~cls_NxK], 1)  # each class, and all but it
    layers, verdicts, boot = [], [], {}
    for i, layer in enumerate(cap['layers']):
        table = {}
        for g in names:
            mean, samples = block_bootstrap(layer['mean'][g], masks)
            lo, hi = np.nanpercentile(samples[:, :k], [2.5, 97.5], axis=0)
            table[g] = {'mean': mean[:k], 'low': lo, 'high': hi,
                        'count': cls_NxK.sum(0), 'overall': float(layer['mean'][g].mean())}
            boot[i, g] = (mean, samples)
        layers.append(table)
    for name, gate, a, b, sign in CLAIMS:
        rows = []
        for i, layer in enumerate(cap['layers']):
            if gate not in names:
                continue
            mean, samples = boot[i, gate]
            ia = CLASSES.index(a)
            ib = CLASSES.index(b) if b else k + ia  # else: every position not in a
            diff = mean[ia] - mean[ib]
            lo, hi = np.nanpercentile(samples[:, ia] - samples[:, ib], [2.5, 97.5])
            # how many units show it on their own: per-unit means from the class sums
            sums, na = layer['class_sums'][gate], cls_NxK[:, ia].sum()
            nb_ = cls_NxK[:, ib].sum() if b else cls_NxK.shape[0] - na
            unit_b = sums[ib] / max(nb_, 1) if b else (sums[-1] - sums[ia]) / max(nb_, 1)
            unit_diff = sums[ia] / max(na, 1) - unit_b
            held = bool(na and nb_) and bool(
                (hi < 0) if sign < 0 else (lo > 0) if sign > 0 else (lo > 0) | (hi < 0))
            opposite = bool((lo > 0) if sign < 0 else (hi < 0) if sign > 0 else False)
            verdict = ('holds' if held else 'the opposite holds' if opposite
                       else 'no difference')
            verdict += f', but small (under {SMALL})' if (held or opposite) and abs(
                diff) < SMALL else ''
            units = (np.mean(unit_diff * (sign or np.sign(diff)) > 0.05)
                     if na and nb_ else float('nan'))
            rows.append({'layer': i, 'difference': float(diff), 'low': float(lo),
                         'high': float(hi), 'holds': held, 'verdict': verdict,
                         'units_over_0.05': float(units), 'n_a': int(na), 'n_b': int(nb_)})
        verdicts.append({'claim': name, 'gate': gate, 'class': a,
                         'against': b or f'every position not a {a}', 'sign': sign,
                         'layers': rows, 'applicable': bool(rows),
                         'holds_in_layers': [r['layer'] for r in rows if r['holds']]})
    return {'classes': list(CLASSES), 'layers': layers, 'claims': verdicts}


def unit_tables(cap: dict, feats_NxF: np.ndarray, top: int = 5, block: int = 1000,
                ridge: float = 1e-2, probe_positions: int = 20_000) -> list[dict]:
    """Per layer and state: for each feature the units most correlated with it, and the held-
    out R^2 of the best unit (picked and fitted on the other positions) beside a ridge probe
    over all the layer's units. Every fifth block of `block` positions is held out; the
    fits read at most `probe_positions` of the others, evenly spaced."""
    n = len(feats_NxF)
    test = (np.arange(n) // block) % 5 == 4
    if not test.any() or test.all():
        test = np.arange(n) >= int(n * 0.8)
    train = np.flatnonzero(~test)
    train = train[np.linspace(0, len(train) - 1, min(len(train), probe_positions)).astype(int)]
    test = np.flatnonzero(test)
    sd_f = feats_NxF.std(0)
    usable = (sd_f > 0) & (feats_NxF[train].std(0) > 0) & (feats_NxF[test].std(0) > 0)
    zf = ((feats_NxF - feats_NxF.mean(0)) / np.where(sd_f > 0, sd_f, 1)).astype(np.float32)
    out = []
    for i, layer in enumerate(cap['layers']):
        for state, x in layer['states'].items():
            sd = x.std(0) + 1e-6
            r_HxF = (x.T @ zf) / n / sd[:, None]  # zf has mean 0: no centring of x needed
            xtr = x[train]
            mu_tr, sd_tr = xtr.mean(0), xtr.std(0) + 1e-6
            ztr, zte = (xtr - mu_tr) / sd_tr, (x[test] - mu_tr) / sd_tr
            gram = ztr.T @ ztr + ridge * len(train) * np.eye(x.shape[1], dtype=np.float32)
            ytr_all = feats_NxF[train] - feats_NxF[train].mean(0)
            w_HxF = np.linalg.solve(gram.astype(np.float64), (ztr.T @ ytr_all).astype(np.float64))
            for f, name in enumerate(FEATURES):
                row = {'layer': i, 'state': state, 'feature': name}
                if not usable[f]:
                    row['absent'] = (f'the feature is constant in this text (always '
                                     f'{feats_NxF[0, f]:g}), or in its held-out part')
                    out.append(row)
                    continue
                r = r_HxF[:, f]
                order = np.argsort(-np.abs(r))[:top]
                ytr, yte = ytr_all[:, f], feats_NxF[test, f]
                r_tr = ztr.T @ ytr
                best = int(np.argmax(np.abs(r_tr)))
                a = r_tr[best] / (ztr[:, best] @ ztr[:, best])
                base = feats_NxF[train, f].mean()
                sst = ((yte - yte.mean()) ** 2).sum()
                one = 1 - ((yte - base - a * zte[:, best]) ** 2).sum() / sst
                probe = 1 - ((yte - base - zte @ w_HxF[:, f]) ** 2).sum() / sst
                row |= {'units': order, 'r': r[order].astype(np.float64), 'best_unit': best,
                        'unit_r2': float(one), 'probe_r2': float(probe)}
                out.append(row)
    return out


def saturation(cap: dict) -> list[dict]:
    """Per layer and gate: each unit's fraction of steps left- (< 0.1) and right-saturated."""
    n = cap['top_ids'].shape[0]
    return [{g: {'left': layer['left'][g] / n, 'right': layer['right'][g] / n}
             for g in layer['left']} for layer in cap['layers']]


# ------------------------------------------------------------------ all of it


def symbols_of(tokenizer, ids) -> str:
    """The text of char or byte token ids, one character a token (a byte as latin-1)."""
    if tokenizer.kind == 'byte':
        return tokenizer.decode_bytes(ids).decode('latin-1')
    return tokenizer.decode(ids)


def check_model(run) -> None:
    """A model inspect can read: a char or byte model with gates."""
    gate_names(run.model.cell)
    if run.tokenizer.kind == 'word':
        raise CharLMError('inspect reads character models, and this is a word model: its '
                          'units and gates step once a word, not once a character')


def corpus(run):
    """The run's own corpus as training cut it (prepared on first use)."""
    try:
        return data.load_corpus(run.config, run.tokenizer)
    except CharLMError as e:
        raise CharLMError(f'{e} (the corpus this run was trained on, whose training split '
                          'counts the n-grams)') from None


def analyse(run, text: str | None = None, max_chars: int = 100_000, ids=None,
            train_ids=None, page_chars: int = PAGE_CHARS, max_order: int = 9) -> dict:
    """Every table of `charlm.inspect` for `text` (or token `ids`), its first `max_chars`
    characters: 'claims', 'units', 'saturation', 'ngram', and 'page' (what index.html shows).
    `run` is a `charlm.runs.Run`; `train_ids` (default: its training split) counts the
    n-grams, of orders 1 to `max_order`. Bad input fails before any work."""
    tok, model = run.tokenizer, run.model
    check_model(run)
    if max_chars < MIN_CHARS:
        raise CharLMError(f'--max_chars={max_chars}: need at least {MIN_CHARS}')
    if ids is None:
        text = text if text is None or tok.kind != 'byte' else text.encode('utf-8')[
            :max_chars].decode('utf-8', errors='ignore')
        symbols = check_text(tok, (text or '')[:max_chars])
        ids = tok.encode(symbols if tok.kind != 'byte' else text)
    else:
        ids = np.asarray(ids)[:max_chars]
        symbols = symbols_of(tok, ids)
        if len(ids) < MIN_CHARS:
            raise CharLMError(f'the text has {len(ids)} characters: inspect needs at least '
                              f'{MIN_CHARS} to say anything')
    ids = np.asarray(ids, np.int64)
    train_ids = np.asarray(corpus(run).tokens['train'] if train_ids is None else train_ids)
    cls = classes(symbols)
    cap = capture(model, run.params, ids, cls)
    if cap['logits_error'] > 1e-3:
        logging.warning('the stepped cells reproduce the model\'s logits only to %.2g: the '
                        'model has changed in a way charlm.interpret does not follow',
                        cap['logits_error'])
    units = unit_tables(cap, features(symbols))
    tables = {'chars': len(ids), 'streams': cap['streams'], 'logits_error': cap['logits_error'],
              'cell': model.cell, 'hidden_sizes': list(model.hidden_sizes),
              'claims': gate_tables(cap, cls, model.cell), 'units': units,
              'saturation': saturation(cap),
              'ngram': ngram_lib.versus(train_ids, tok.vocab_size, ids, cap['bits'],
                                        cap['top_ids'][:-1, 0], cls[1:], CLASSES,
                                        np.arange(min(page_chars, len(ids))), max_order)}
    p = min(page_chars, len(ids))
    picked = {}  # (layer, state, unit) -> the features it is among the top 3 of
    for row in units:
        for u, r in zip(row.get('units', [])[:3], row.get('r', [])[:3], strict=True):
            picked.setdefault((row['layer'], row['state'], int(u)), []).append(
                (row['feature'], float(r)))
    keys = list(picked)
    tables['page'] = {
        'text': symbols[:p], 'symbols': [symbols_of(tok, [i]) for i in range(tok.vocab_size)],
        'units': [{'layer': k[0], 'state': k[1], 'unit': k[2], 'features': picked[k]}
                  for k in keys],
        'acts': np.stack([cap['layers'][k[0]]['states'][k[1]][:p, k[2]] for k in keys])
        if keys else np.zeros((0, p)),
        'model_top_ids': cap['top_ids'][:p], 'model_top_p': cap['top_p'][:p]}
    return tables
