"""Time and memory of charlm runs on corpora of any size: a one-step run, and preparing.

  python benchmarks/corpora.py --corpus=/work/shared/data/tinyshakespeare.txt \
      --corpus=/tmp/corpora/py_100MB.txt --json=runs/corpora.json
  python benchmarks/corpora.py --prepare --tokenizer=byte --corpus=/tmp/corpora/py_1GB.txt \
      --extra=--config.eval_max_tokens=10000
  python benchmarks/corpora.py --repo=/tmp/charlm-before --corpus=...   # another checkout

Each run is a child process started from --repo's root with --python, timed from start to
exit; its peak RSS is the ru_maxrss that os.wait4 returns (the largest single process among
it and its waited-for children; it starts at this script's own ~15 MB, which exec keeps).
One-step run, as the issue measured it, in a fresh --workdir each time (a checkpoint would
make it resume), plus every --extra flag:
  python -m charlm.main --config=configs/shakespeare.py --workdir=TMP --config.data.path=FILE \
      --config.num_train_steps=1 --config.data.val_fraction=0.001
With --prepare, each run of `python -m charlm.prepare` (same data flags, plus --tokenizer and
--prepare_extra) writes into a fresh cache dir, so it really prepares; then the corpus is
prepared once more into a kept dir, which the one-step runs get as --config.data.cache_dir.
Newer charlm also prepares on first use, into data.cache_dir ('' = ~/.cache/charlm): without
--prepare, runs after the first reuse that, unless --fresh_cache gives each run a new one.
The table gives the median over --runs and the min-max; MB and GB are 10^6 and 10^9 bytes.

The corpora: real text, the .py files (UTF-8 ones only) of installed Python packages,
concatenated in sorted path order per source dir, each file ending with a newline. Each
output is that stream's first SIZE bytes (a multi-byte character the cut would split becomes
newlines), so the smaller ones are prefixes of the larger; past the end of the stream it
starts over with the files shuffled (random.Random(pass number)). Made with
  python benchmarks/corpora.py --make_corpora=/tmp/corpora --sizes=10e6,100e6,337e6,1e9 \
      --source=DIR ...   # default: this Python's stdlib and site-packages
which writes py_10MB.txt, py_100MB.txt, py_337MB.txt, py_1GB.txt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import random
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def py_files(sources: list[str]) -> list[str]:
    """Every .py file (not a link) under the sources, sorted per source, without duplicates."""
    seen, out = set(), []
    for src in sources:
        found = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs if f.endswith('.py')]
        for path in sorted(found):
            real = os.path.realpath(path)
            if not os.path.islink(path) and os.path.isfile(path) and real not in seen:
                seen.add(real)
                out.append(path)
    return out


def size_name(size: int) -> str:
    for unit, n in (('GB', 10**9), ('MB', 10**6)):
        if size % n == 0:
            return f'py_{size // n}{unit}.txt'
    return f'py_{size}B.txt'


def make_corpora(out_dir: str, sizes: list[int], sources: list[str]) -> None:
    files = py_files(sources)
    os.makedirs(out_dir, exist_ok=True)
    outs = {n: open(os.path.join(out_dir, size_name(n)), 'wb') for n in sizes}
    left, used, skipped, passes = {n: n for n in sizes}, 0, 0, 0
    while any(left.values()):
        if passes and not used:
            sys.exit(f'no UTF-8 .py file under {sources}')
        order = list(files)
        if passes:
            random.Random(passes).shuffle(order)
        for path in order:
            with open(path, 'rb') as src:
                data = src.read()
            try:
                data.decode('utf-8')
            except UnicodeDecodeError:
                skipped += not passes
                continue
            data = data if data.endswith(b'\n') else data + b'\n'
            used += not passes
            for n, out in outs.items():
                if len(data) <= left[n]:
                    out.write(data)
                    left[n] -= len(data)
                elif left[n]:
                    k = left[n]  # the cut must not split a character: 0b10xxxxxx continues one
                    while k and data[k] & 0xC0 == 0x80:
                        k -= 1
                    out.write(data[:k] + b'\n' * (left[n] - k))
                    left[n] = 0
            if not any(left.values()):
                break
        passes += 1
    for out in outs.values():
        out.close()
    print(f'{len(files)} .py files under {len(sources)} dirs, {used} used, {skipped} not UTF-8; '
          f'{passes} pass(es) over them (more than 1 = repeated, reshuffled)')
    for n in sizes:
        path = os.path.join(out_dir, size_name(n))
        print(path, os.path.getsize(path))


# absl's prefix: I1203 07:30:35.030689 ... then charlm's progress line 'step 1/1 loss ...'
FIRST_STEP = re.compile(r'^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*\] step 1/', re.M)


def timed(cmd: list[str], cwd: str, log: str) -> dict:
    """Wall seconds from start to exit and peak RSS (bytes) of one child process; for a
    training run also the seconds from start to its first step's log line."""
    with open(log, 'wb') as out:
        start = datetime.datetime.now()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = pathlib.Path(log).read_text(errors='replace')
    if proc.returncode:
        sys.exit(f'{" ".join(cmd)}\nexited {proc.returncode}; the end of its log:\n{text[-3000:]}')
    out = {'wall_s': wall, 'peak_rss_bytes': usage.ru_maxrss * 1024}
    if m := FIRST_STEP.search(text):
        h, mi, sec = int(m[1]), int(m[2]), float(m[3])
        day = start.replace(hour=0, minute=0, second=0, microsecond=0)
        at = day + datetime.timedelta(hours=h, minutes=mi, seconds=sec)
        out['first_step_s'] = (at - start).total_seconds() % 86400  # past midnight too
    return out


def stats(runs: list[dict], key: str) -> dict:
    xs = [r[key] for r in runs]
    return {'median': statistics.median(xs), 'min': min(xs), 'max': max(xs)}


def bench(args, corpus: str) -> dict:
    path = f'--config.data.path={os.path.abspath(corpus)}'
    data = ['--config.data.val_fraction=0.001']
    data += [f'--config.data.tokenizer={args.tokenizer}'] if args.tokenizer else []
    row = {'corpus': corpus, 'bytes': os.path.getsize(corpus)}

    def run(module: str, flags: list[str], log: str) -> dict:
        cmd = [args.python, '-m', f'charlm.{module}', f'--config={args.config}'] + flags
        print('  ', ' '.join(cmd), flush=True)
        return timed(cmd, args.repo, log)

    def prepare(cache: str, log: str) -> dict:
        return run('prepare', [path, f'--config.data.cache_dir={cache}'] + data
                   + args.prepare_extra, log)

    with tempfile.TemporaryDirectory(prefix='charlm-corpora-', dir=args.tmp) as tmp:
        cache = []
        if args.prepare:
            prep = []
            for i in range(args.runs):
                prep.append(prepare(os.path.join(tmp, f'cache{i}'), f'{tmp}/prepare{i}.log'))
                prep[-1]['mb_per_s'] = row['bytes'] / 1e6 / prep[-1]['wall_s']
                shutil.rmtree(os.path.join(tmp, f'cache{i}'), ignore_errors=True)
            row['prepare'] = {'runs': prep, **{k: stats(prep, k) for k in prep[0]}}
            prepare(os.path.join(tmp, 'cache'), f'{tmp}/prepare.log')  # kept for the runs
            cache = [f'--config.data.cache_dir={os.path.join(tmp, "cache")}']
        runs = []
        for i in range(args.runs):
            workdir = os.path.join(tmp, f'workdir{i}')  # fresh: a checkpoint would resume
            if args.fresh_cache:
                cache = [f'--config.data.cache_dir={os.path.join(tmp, f"runcache{i}")}']
            runs.append(run('main', [f'--workdir={workdir}', path, '--config.num_train_steps=1']
                            + data + cache + args.extra, f'{tmp}/main{i}.log'))
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(os.path.join(tmp, f'runcache{i}'), ignore_errors=True)
        row['one_step'] = {'runs': runs, **{k: stats(runs, k) for k in runs[0]
                                            if all(k in r for r in runs)}}
    return row


def table(rows: list[dict]) -> str:
    prep = any('prepare' in r for r in rows)
    head = ['corpus', 'size MB', 'start to exit s', 'min-max', 'start to step 1 s',
            'peak RSS GB', 'min-max']
    head += ['prepare s', 'prepare MB/s', 'prepare RSS GB'] if prep else []
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        w, m = r['one_step']['wall_s'], r['one_step']['peak_rss_bytes']
        f = r['one_step'].get('first_step_s')
        cells = [os.path.basename(r['corpus']), f"{r['bytes'] / 1e6:,.1f}", f"{w['median']:.1f}",
                 f"{w['min']:.1f}-{w['max']:.1f}", f"{f['median']:.1f}" if f else '',
                 f"{m['median'] / 1e9:.2f}",
                 f"{m['min'] / 1e9:.2f}-{m['max'] / 1e9:.2f}"]
        if prep:
            p = r.get('prepare')
            cells += [f"{p['wall_s']['median']:.1f}", f"{p['mb_per_s']['median']:.1f}",
                      f"{p['peak_rss_bytes']['median'] / 1e9:.2f}"] if p else ['', '', '']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--corpus', action='append', default=[], help='a UTF-8 file; repeatable')
    p.add_argument('--config', default='configs/shakespeare.py', help='the config file run')
    p.add_argument('--runs', type=int, default=3, help='runs per measurement (median, min-max)')
    p.add_argument('--repo', default=str(REPO), help='the charlm checkout to run')
    p.add_argument('--python', default=sys.executable, help='the Python that runs charlm')
    p.add_argument('--extra', action='append', default=[], help='a flag for the one-step runs')
    p.add_argument('--prepare', action='store_true', help='time charlm.prepare, train on it')
    p.add_argument('--fresh_cache', action='store_true', help='a new cache dir per one-step run')
    p.add_argument('--tokenizer', default='', help="char | byte ... ('' = the config's)")
    p.add_argument('--prepare_extra', action='append', default=[], help='a flag for prepare')
    p.add_argument('--tmp', default=None, help='where the workdirs and caches go')
    p.add_argument('--json', default='', help='write every figure here')
    p.add_argument('--make_corpora', default='', help='write the py_*.txt corpora here, exit')
    p.add_argument('--sizes', default='10e6,100e6,337e6,1e9', help='their sizes in bytes')
    p.add_argument('--source', action='append', default=[], help='a dir of .py files')
    args = p.parse_args()
    if args.prepare and args.fresh_cache:
        p.error('--fresh_cache: the runs after --prepare use its cache')
    if args.make_corpora:
        paths = sysconfig.get_paths()
        sources = args.source or list(dict.fromkeys([paths['stdlib'], paths['purelib']]))
        sizes = [int(float(s)) for s in args.sizes.split(',')]
        return make_corpora(args.make_corpora, sizes, sources)
    rows = []
    for corpus in args.corpus:
        print(f'{corpus}:', flush=True)
        rows.append(bench(args, corpus))
        if args.json:  # after every corpus, so a long run that dies keeps what it measured
            pathlib.Path(args.json).write_text(json.dumps(
                {'argv': sys.argv, 'repo': args.repo, 'python': args.python, 'rows': rows},
                indent=1))
    print(table(rows))


if __name__ == '__main__':
    main()
