r"""See inside a trained character model: the tutorials' claims about its gates tested,
its most interpretable units, its gates' saturation, an n-gram baseline, and a page to
explore them.

  python -m charlm.inspect --workdir=runs/shakespeare_char --split=val --out=inspect-val
  python -m charlm.inspect --workdir=runs/shakespeare_char --text_file=sonnets.txt \
      --out=inspect-sonnets --max_chars=50000 --step=4000

Writes into --out: claims.json and claims.md, units.json, saturation.png, ngram.json and
index.html (open it in a browser; it needs no network). What each one means:
docs/inspect.md. The analysis is `charlm.interpret`; `run.inspect(text)` returns the same
tables in Python.
"""

from __future__ import annotations

from absl import app, flags

from charlm import cli, data, interpret, interpret_report, runs
from charlm.errors import CharLMError


def inspect(workdir: str, out: str, text_file: str | None = None, split: str | None = None,
            step: int | None = None, max_chars: int = 100_000) -> dict:
    """Every check first, then the tables, then the folder written in one rename."""
    if bool(text_file) == bool(split):
        raise CharLMError('name the text: --text_file=FILE or --split=val (one of them)')
    if max_chars < interpret.MIN_CHARS:
        raise CharLMError(f'--max_chars={max_chars}: need at least {interpret.MIN_CHARS}')
    interpret_report.check_out(out)
    run = runs.find(workdir, step)
    interpret.check_model(run)
    if text_file:
        text = data.load_text(text_file)
        tables = interpret.analyse(run, text, max_chars)
        source = text_file
    else:
        corpus = interpret.corpus(run)
        if split not in corpus.tokens:
            raise CharLMError(f'this run has no {split} split: use --split=val or --text_file')
        tables = interpret.analyse(run, ids=corpus.tokens[split][:max_chars],
                                   max_chars=max_chars, train_ids=corpus.tokens['train'][:])
        source = f'the {split} split of {run.config.data.path or "the built-in corpus"}'
    interpret_report.write(tables, out, f'{source} (step {run.step})')
    return tables


# ------------------------------------------------------------------ command line

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    flags.DEFINE_string('workdir', None, 'A training workdir.')
    flags.DEFINE_string('text_file', None, 'The text to read (UTF-8).')
    flags.DEFINE_string('split', None, "Or a split of the run's own corpus: val, test, train.")
    flags.DEFINE_integer('step', None, runs.STEP_HELP)
    flags.DEFINE_integer('max_chars', 100_000, 'Read the first N characters of the text.')
    flags.DEFINE_string('out', 'inspect', 'The folder to write (new, or an earlier output).')
    flags.mark_flags_as_required(['workdir'])


@cli.command
def main(argv):
    tables = inspect(FLAGS.workdir, FLAGS.out, FLAGS.text_file, FLAGS.split, FLAGS.step,
                     FLAGS.max_chars)
    ng = tables['ngram']
    for v in tables['claims']['claims']:
        rows = '; '.join(f'layer {r["layer"]} {r["verdict"]} ({r["difference"]:+.3f} '
                         f'[{r["low"]:+.3f}, {r["high"]:+.3f}])' for r in v['layers'])
        print(f'{v["claim"]}: {rows or "not applicable: no " + v["gate"] + " gate"}')
    print(f'model {ng["model_bits_per_char"]:.3f} bits/char; best n-gram ({ng["best_order"]}-gram) '
          f'{min(ng["bits_per_char"]):.3f}')
    print(f'wrote {FLAGS.out}/index.html and the tables beside it')


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
