"""Scoring a trained run's model on text: the figures of `charlm.evaluate` and `run.score`.

  out = scoring.score(run, run.params, text)          # loss, bits per char, perplexity, ...
  ids, chars = scoring.split_of(run, 'val')           # its own split, as training cut it
  out = scoring.score_ids(run, run.params, ids, chars, window=256)

`run` is a `charlm.runs.Run` (what is read here: its model, tokenizer and config). The
text is scored over every target in the same fixed windows as training's validation (each
from a zero state, the state passed on in a stateful run), so a checkpoint's split scores
the val loss logged at its step. Dynamic evaluation (`charlm.dynamic`) reads the text with
a gradient step after each segment, its settings filled in by `dynamic_setup`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging
from flax import jax_utils

from charlm import data, steps, tokenizers
from charlm import dynamic as dynamic_lib
from charlm.errors import CharLMError
from charlm.tokenizers import _show


def check_text(tokenizer: tokenizers.Tokenizer, text: str | bytes) -> None:
    """A char (byte) model cannot read characters (bytes) it never saw: a one-line error
    naming them (a folding char model reads them as U+FFFD, as a word model reads <unk>)."""
    missing = tokenizer.unknown(text) if not tokenizers.reads_unknown(tokenizer) else []
    if missing:
        what = tokenizers.text_units(tokenizer.kind)
        raise CharLMError(f'the text has {what} the model never saw in training: '
                          f'{_show(missing)}')


def split_of(run, split: str) -> tuple[data.TokenFile, int]:
    """One split of the run's own corpus as training cut it (its prepared token file), and
    the characters (bytes) it predicts."""
    d = run.config.data
    try:
        corpus = data.load_corpus(run.config, run.tokenizer)
    except CharLMError as e:
        raise CharLMError(f'{e} (the corpus this run was trained on; score another file '
                          'with --text_file)') from None
    if split not in corpus.tokens:
        raise CharLMError(f'this run has no {split} split (data.test_fraction='
                          f'{d.test_fraction}, data.test_size={d.get("test_size", 0)}); use '
                          '--split=val or --text_file')
    return corpus.tokens[split], corpus.chars[split]


def score(run, params, text: str | bytes, window: int | None = None,
          token_losses: bool = False) -> dict[str, Any]:
    """Loss per token (nats), bits per token and per character, perplexity, over `text`.

    Characters outside a char model's vocabulary are an error naming them; words outside
    a word model's vocabulary are scored as <unk> and counted in 'unknown_tokens'.
    """
    tok = run.tokenizer
    check_text(tok, text)
    ids = tok.encode(text)  # unknown words / folded characters are counted in the output
    chars = (len(ids) - 1 if tok.kind == 'byte'
             else data.predicted_chars(tok, text))  # all but the first token's, as training
    out = score_ids(run, params, ids, chars, window, token_losses)
    if tokenizers.reads_unknown(tok):
        out['unknown_tokens'] = int(np.sum(ids == 0))
        out['unknown_words' if tok.kind == 'word' else 'unknown_characters'] = tok.unknown(
            text)[:20]
    return out


def score_ids(run, params, ids, chars: int, window: int | None = None,
              token_losses: bool = False) -> dict[str, Any]:
    """`score` of token ids (an array or a prepared split) predicting `chars` characters;
    with `token_losses`, also each predicted token's loss (float32[len(ids) - 1])."""
    tok, config = run.tokenizer, run.config
    if len(ids) < 2:
        raise CharLMError(f'the text has {len(ids)} tokens; scoring needs at least 2')
    # The same eval batch as training's validation: same windows, same sums.
    layout = data.eval_layout(config.eval_batch_size)
    eval_fn = steps.parallel_steps(run.model).eval  # cached: compiled once per model
    params = jax_utils.replicate(params)
    window = window or config.data.seq_len
    per = tokenizers.text_unit(tok.kind)
    losses = np.full(len(ids) - 1, np.nan, np.float32) if token_losses else None
    metrics = steps.evaluate(eval_fn, params, ids, window, layout, chars,
                             config.data.get('stateful', False), unit=per, token_losses=losses)
    return ({'token_losses': losses} if token_losses else {}) | {
        'tokenizer': tok.kind, tokenizers.text_units(tok.kind): chars,
        'tokens': int(metrics['tokens']),
        'window': window,
        'loss': metrics['loss'], 'bits_per_token': metrics['bits_per_token'],
        f'bits_per_{per}': metrics[f'bits_per_{per}'], 'perplexity': metrics['perplexity'],
        'unknown_tokens': (int(np.sum(np.asarray(ids) == 0)) if tokenizers.reads_unknown(tok)
                           else 0),
        'unknown_words': [],
    }


# ------------------------------------------------------------------ dynamic evaluation


def dynamic_setup(run, params, dynamic: dict[str, Any]
                  ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The settings with the segment length filled in (seq_len 0: the run's data.seq_len),
    and rule rms-global's prior: gradient statistics of the run's own training split."""
    dynamic = dynamic_lib.DEFAULTS | dynamic
    dynamic['seq_len'] = dynamic['seq_len'] or run.config.data.seq_len
    if dynamic['rule'] != 'rms-global':
        return dynamic, None
    train, _ = split_of(run, 'train')
    logging.info('rms-global: gradient statistics of %s training tokens',
                 f'{min(len(train) - 1, dynamic["stats_tokens"] or len(train)):,}')
    prior = dynamic_lib.gradient_stats(run.model, params, train, dynamic['seq_len'],
                                       streams=run.config.batch_size,
                                       max_tokens=dynamic['stats_tokens'])
    return dynamic, prior


def read_dynamically(run, params, ids, dynamic: dict[str, Any], prior,
                     **kw) -> dict[str, Any]:
    """`charlm.dynamic.dynamic_evaluate` of `ids` with `dynamic_setup`'s settings."""
    return dynamic_lib.dynamic_evaluate(
        run.model, params, ids, dynamic['seq_len'], lr=dynamic['lr'], decay=dynamic['decay'],
        rule=dynamic['rule'], streams=dynamic['streams'], prior=prior, **kw)


def tune_dynamic_lr(run, params, tune_file: str, lrs, dynamic: dict[str, Any],
                    prior=None, decays=()) -> dict[str, Any]:
    """Dynamic evaluation of `tune_file` at each lr of `lrs` and each decay of `decays`
    (default: the one given; the other settings as given, filled in by `dynamic_setup`):
    {'file', 'lr' and 'decay' (the lowest loss's), 'losses' (lr -> loss per token at that
    decay), 'decay_losses' (decay -> its losses)}."""
    tok = run.tokenizer
    text = data.load_text(tune_file, as_bytes=tok.kind == 'byte')
    check_text(tok, text)
    ids = tok.encode(text)
    grid = {}
    for decay in (decays or (dynamic['decay'],)):
        losses = grid.setdefault(float(decay), {})
        for lr in lrs:
            settings = dynamic | {'lr': float(lr), 'decay': float(decay)}
            losses[float(lr)] = read_dynamically(run, params, ids, settings, prior)['loss']
            logging.info('dynamic evaluation of %s at lr %g, decay %g: %.4f nats/token',
                         tune_file, lr, decay, losses[float(lr)])
    decay, lr = min(((d, lr) for d, losses in grid.items() for lr in losses),
                    key=lambda k: grid[k[0]][k[1]])
    return {'file': tune_file, 'lr': lr, 'decay': decay, 'losses': grid[decay],
            'decay_losses': grid}
