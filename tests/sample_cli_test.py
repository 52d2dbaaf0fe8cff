"""`python -m charlm.sample` as a user runs it: real processes, real exit codes."""

import hashlib
import io
import pathlib
import shutil

import jax
import pytest
from conftest import run_cli

from charlm import checkpointing, sample, sampler, steps, tokenizers, train
from charlm.errors import CharLMError
from configs import tiny

pytestmark = pytest.mark.xdist_group('sample_cli')  # its module-scoped fixture: one worker

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEXT = ('ROMEO:\nBut soft, what light through yonder window breaks?\n\n'
        'JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n') * 60


def run(*args, devices=1, timeout=300):
    return run_cli('charlm.sample', *args, devices=devices, timeout=timeout)


def assert_one_line_error(proc, match):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('charlm: error:')]
    assert len(errors) == 1 and match in errors[0], proc.stderr[-2000:]


def snapshot(path: pathlib.Path) -> dict:
    """Every file and folder under `path`, with its content hash and modification time."""
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.is_file() and
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob('*'))}


def make_config(tmp, **fields):
    config = tiny.get_config()
    (tmp / 'corpus.txt').write_text(TEXT, encoding='utf-8')
    config.data.path = str(tmp / 'corpus.txt')
    config.data.cache_dir = str(tmp / 'cache')
    config.update(fields)
    return config


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A tiny char model trained on the 4 fake devices; best at step 20, latest 10 and 20."""
    tmp = tmp_path_factory.mktemp('sample')
    assert jax.device_count() == 4
    train.train_and_evaluate(make_config(tmp), str(tmp / 'run'))
    return tmp / 'run'


def test_samples_on_one_device_and_leaves_the_workdir_alone(workdir, tmp_path):
    before = snapshot(workdir)
    args = [f'--workdir={workdir}', '--prompt=ROMEO:', '--length=40', '--temperature=0.5,1.5',
            '--top_k=20', '--top_p=0.95', '--num_samples=2', '--seed=3']
    proc = run(*args, f'--output={tmp_path}/out.txt')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '1 device here' in proc.stderr and f'{workdir}/best/20' in proc.stderr
    out = proc.stdout
    headers = [ln for ln in out.splitlines() if ln.startswith('==> sample')]
    assert headers == [f'==> sample {i} of 4, temperature {t}, seed 3 <=='
                       for i, t in ((1, 0.5), (2, 0.5), (3, 1.5), (4, 1.5))]
    parts = [s.split('\n', 1)[1] for s in out.split('==> sample')[1:]]
    samples = [s[:-2] for s in parts[:-1]] + [parts[-1][:-1]]  # '\n\n' between, '\n' at end
    assert all(s.startswith('ROMEO:') and len(s) == len('ROMEO:') + 40 for s in samples)
    assert samples[0] != samples[1] and samples[2] != samples[3]  # streams differ
    assert (tmp_path / 'out.txt').read_text(encoding='utf-8') == out
    again = run(*args)
    assert again.returncode == 0 and again.stdout == out  # same seed, same text
    assert snapshot(workdir) == before


def test_step_and_empty_prompt(workdir):
    proc = run(f'--workdir={workdir}', '--step=10', '--length=25', '--temperature=0')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'{workdir}/checkpoints/10' in proc.stderr
    assert '==>' not in proc.stdout and len(proc.stdout) == 25 + 1  # the text and a newline


def test_text_streams_out_in_chunks(workdir):
    class Recorder(io.StringIO):
        writes = []

        def write(self, s):
            self.writes.append(s)
            return super().write(s)

    out = Recorder()
    texts = sample.run(str(workdir), 'JULIET:', length=20, temperature=0.8, chunk=6, out=out)
    assert out.writes == ['JULIET:', *(texts[0][7 + i:7 + i + 5] for i in range(0, 20, 5)),
                          '\n']  # 20 tokens in 4 equal calls of 5, each printed at once


def untrained_run(tmp_path, name, tok, config):
    """A workdir holding an untrained checkpoint of `tok`'s vocabulary: enough to sample."""
    model = steps.make_model(config, tok.vocab_size)
    state = steps.create_state(model, steps.make_optimizer(config), jax.random.key(0))
    ckpts = checkpointing.Checkpoints(str(tmp_path / name))
    ckpts.save(1, state, tok.to_json(), config.to_dict(), {})
    ckpts.wait()
    ckpts.close()
    return str(tmp_path / name)


def test_word_model_warns_about_unknown_words(tmp_path, caplog):
    config = make_config(tmp_path)
    config.data.tokenizer = 'word'
    workdir = untrained_run(tmp_path, 'words', tokenizers.WordTokenizer.from_text(TEXT), config)
    texts = sample.run(workdir, 'Romeo zebra', length=8, num_samples=2,
                       out=io.StringIO())
    assert "words not in the vocabulary, read as <unk>: 'zebra'" in caplog.text
    assert len(texts) == 2 and all(t.startswith('Romeo zebra') for t in texts)
    assert texts[0] != texts[1]


def test_folding_char_model_warns_about_folded_characters(tmp_path, caplog):
    config = make_config(tmp_path)
    tok = tokenizers.CharTokenizer.from_text(TEXT, max_vocab=12)
    workdir = untrained_run(tmp_path, 'folded', tok, config)
    texts = sample.run(workdir, 'Zq', length=8, out=io.StringIO())
    assert "characters not in the vocabulary, read as U+FFFD: 'Z', 'q'" in caplog.text
    assert texts[0].startswith('Zq') and len(texts[0]) == 10


@pytest.mark.parametrize('args,match', [
    (['--prompt=ROMEO: Zq!'], "the prompt 'ROMEO: Zq!' has characters not in the vocabulary: "
                               "'Z', 'q'"),
    (['--prompt=', '--start=%'], "the start text '%' has characters not in the vocabulary"),
    (['--temperature=-0.5'], 'temperature must be a number >= 0'),
    (['--temperature=1,hot'], '--temperature must be numbers'),
    (['--top_k=-1'], '--top_k must be in [0, 34] (0 = off; 34 = the vocabulary size), got -1'),
    (['--top_k=1000'], '--top_k must be in [0, 34] (0 = off; 34 = the vocabulary size), got 1000'),
    (['--top_p=0'], '--top_p must be in (0, 1]'),
    (['--top_p=1.01'], '--top_p must be in (0, 1]'),
    (['--length=0'], '--length must be positive'),
    (['--num_samples=0'], '--num_samples must be positive'),
    (['--step=7'], 'no checkpoint of step 7'),
    (['--output=/no/such/dir/out.txt'], 'cannot write --output=/no/such/dir/out.txt'),
])
def test_bad_input_is_one_line_and_leaves_the_output_file(workdir, tmp_path, args, match):
    kept = tmp_path / 'kept.txt'
    kept.write_text('the samples of yesterday\n', encoding='utf-8')
    # A later --output (in args) replaces this one; either way the file must survive.
    proc = run(f'--workdir={workdir}', '--length=5', f'--output={kept}', *args)
    assert_one_line_error(proc, match)
    assert kept.read_text(encoding='utf-8') == 'the samples of yesterday\n'
    assert list(tmp_path.iterdir()) == [kept]  # no temporary file left beside it


def test_output_is_replaced_only_by_a_whole_file(workdir, tmp_path, monkeypatch):
    out = tmp_path / 'out.txt'
    out.write_text('kept\n', encoding='utf-8')
    real_stream = sampler.stream

    def fails_midway(*args, **kwargs):
        yield next(real_stream(*args, **kwargs))
        raise RuntimeError('the sampler failed')

    monkeypatch.setattr(sampler, 'stream', fails_midway)
    with pytest.raises(RuntimeError, match='the sampler failed'), sample.Tee(out) as tee:
        sample.run(str(workdir), 'JULIET:', length=20, chunk=6, out=tee)
    assert out.read_text(encoding='utf-8') == 'kept\n' and list(tmp_path.iterdir()) == [out]
    monkeypatch.undo()
    with sample.Tee(out) as tee:
        texts = sample.run(str(workdir), 'JULIET:', length=20, chunk=6, out=tee)
    assert out.read_text(encoding='utf-8') == texts[0] + '\n'
    assert list(tmp_path.iterdir()) == [out]


def test_no_checkpoint(tmp_path):
    assert_one_line_error(run(f'--workdir={tmp_path}'), 'no checkpoint in')
    assert list(tmp_path.iterdir()) == []
    assert_one_line_error(run(f'--workdir={tmp_path}/nope'), 'does not exist')


@pytest.mark.parametrize('damage', ['garble_arrays', 'truncate_tokenizer'])
def test_damaged_checkpoint(workdir, tmp_path, damage):
    copy = tmp_path / 'run'
    shutil.copytree(workdir, copy)
    best = copy / 'best' / '20'
    if damage == 'garble_arrays':  # same sizes, scrambled middles
        for f in (best / 'state').rglob('d/*'):
            data = bytearray(f.read_bytes())
            data[len(data) // 4:len(data) // 2] = bytes(len(data) // 2 - len(data) // 4)
            f.write_bytes(bytes(data))
        match = 'cannot restore checkpoint'
    else:
        f = best / 'tokenizer' / 'metadata'
        f.write_bytes(f.read_bytes()[:20])
        match = 'is unreadable'
    assert_one_line_error(run(f'--workdir={copy}', '--length=5'), match)


def test_top_k_list_is_a_grid_from_the_same_random_numbers(workdir):
    """--top_k=3,34,0 x --temperature=0.7,1.3: each sample headed by its settings; top_k
    equal to the vocabulary keeps every token, so it draws what top_k=0 draws."""
    out = io.StringIO()
    texts = sample.run(str(workdir), 'ROMEO:', length=30, temperature=(0.7, 1.3),
                       top_k=(3, 34, 0), seed=5, out=out)
    assert len(texts) == 6
    headers = [ln for ln in out.getvalue().splitlines() if ln.startswith('==> sample')]
    assert headers == [f'==> sample {i + 1} of 6, temperature {t}, top_k {k}, seed 5 <=='
                       for i, (k, t) in enumerate((k, t) for k in (3, 34, 0) for t in (0.7, 1.3))]
    assert texts[2:4] == texts[4:6]  # k = V and k = 0: the same draws
    assert texts[0:2] != texts[4:6]  # k = 3 decodes differently
    single = sample.run(str(workdir), 'ROMEO:', length=30, temperature=0.7, top_k=3, seed=5,
                        out=io.StringIO())
    assert single == texts[:1]  # the first cell of the grid is the lone sample


def test_beam_search_from_the_command_line(workdir):
    proc = run(f'--workdir={workdir}', '--prompt=ROMEO:', '--length=12', '--beam=4',
               '--num_samples=2')
    assert proc.returncode == 0, proc.stderr[-2000:]
    heads = [ln for ln in proc.stdout.splitlines() if ln.startswith('==> beam')]
    assert [h.split(',')[0] for h in heads] == ['==> beam 1 of 4', '==> beam 2 of 4']
    logps = [float(h.split('log-probability ')[1].split()[0]) for h in heads]
    assert logps[0] >= logps[1]
    out = io.StringIO()
    greedy = sample.run(str(workdir), 'ROMEO:', 12, 0.0, out=out)[0]
    one = sample.run_beam(str(workdir), 'ROMEO:', 12, beam=1, out=io.StringIO())
    assert one[0][0] == greedy  # a beam of one is greedy decoding
    for kwargs, match in (({'beam': 2, 'num_samples': 3}, 'a beam returns at most its width'),
                          ({'beam': 0}, '--beam must be a width >= 1')):
        with pytest.raises(CharLMError, match=match):
            sample.run_beam(str(workdir), 'ROMEO:', 12, **kwargs)
    proc = run(f'--workdir={workdir}', '--beam=3', '--temperature=0.7', '--top_k=5')
    assert_one_line_error(proc, 'deterministic, so --temperature, --top_k would be ignored')


# ------------------------------------------------------------------ the Python API


def test_load_is_the_commands_way_to_use_a_run(workdir, tmp_path):
    """charlm.load(workdir): sample, score and gates give what the commands give."""
    import numpy as np

    import charlm
    from charlm import evaluate, gates

    run = charlm.load(str(workdir))
    assert (run.step, run.config.model.cell, run.tokenizer.kind) == (20, 'lstm', 'char')
    assert charlm.load(str(workdir), step=10).step == 10
    assert jax.tree.structure(run.params) == jax.tree.structure(
        run.model.init(jax.random.key(0), run.model.init_carry(1),
                       np.zeros((1, 2), np.int32))['params'])

    out = io.StringIO()
    printed = sample.run(str(workdir), prompt='ROMEO:', length=30, temperature=(0.7,),
                         num_samples=2, seed=4, out=out)
    assert run.sample('ROMEO:', 30, temperature=0.7, num_samples=2, seed=4) == printed
    one = run.sample('ROMEO:', 30, temperature=0.7, seed=4)
    assert isinstance(one, str) and one == printed[0] and one.startswith('ROMEO:')
    assert run.sample('RO', 20, temperature=0) == run.sample('RO', 20, temperature=0, seed=9)

    text = TEXT[:700]
    path = tmp_path / 'held_out.txt'
    path.write_text(text, encoding='utf-8')
    scored = run.score(text, window=48)
    command = evaluate.evaluate(str(workdir), text_file=str(path), window=48)
    for key in ('loss', 'bits_per_char', 'perplexity', 'characters', 'tokens'):
        assert scored[key] == command[key], key
    losses = scored['token_losses']
    assert losses.shape == (len(text) - 1,) and np.isfinite(losses).all()
    np.testing.assert_allclose(losses.mean(), scored['loss'], rtol=1e-5)
    # Each window starts from zero: the first target of the second window has the same
    # loss whatever came before it, so a text starting there scores it the same.
    again = run.score(text[48:], window=48)['token_losses']
    np.testing.assert_allclose(again[:48], losses[48:96], rtol=1e-5, atol=1e-6)

    acts = run.gates('ROMEO: But soft')
    assert acts['forget'].shape == (15, run.model.hidden_sizes[0])
    drawn = gates.gates(str(workdir), 'ROMEO: But soft', str(tmp_path / 'g.png'))
    np.testing.assert_array_equal(acts['forget'], drawn['forget'])
    with pytest.raises(CharLMError, match='layer'):
        run.gates('ROMEO', layer=7)


def test_import_charlm_is_fast_and_quiet():
    """`import charlm` loads no JAX and defines no flags; load() is where they come in."""
    import subprocess
    import sys

    code = ('import sys, charlm; from absl import flags; '
            'print(sorted(m for m in ("jax", "flax", "optax") if m in sys.modules), '
            'len(list(flags.FLAGS)))')
    before = subprocess.run([sys.executable, '-c', 'from absl import flags; '
                             'print(len(list(flags.FLAGS)))'], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()[-1]
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == f'[] {before}' and not out.stderr
