"""configs/enwik8.py and configs/text8.py on small synthetic stand-ins of their files."""

import json

import numpy as np
import pytest
from conftest import run_cli

from charlm import data


def enwik8_like(n: int) -> bytes:
    """Wiki markup with multi-byte UTF-8 and a few stray bytes, like enwik8's 205 values."""
    rng = np.random.default_rng(0)
    words = ['<page>', '<title>', 'Anarchism', '[[', ']]', "'''", 'the', 'caf\u00e9',
             '\u00fcber', '\u2014', '&amp;', '{{cite}}', '\n', ' ', ' ', ' ']
    out = ''.join(rng.choice(words, size=n // 3)).encode()[:n]
    return out[:-2] + b'\xc3\n'  # a cut sequence: bytes, not characters


def text8_like(n: int) -> bytes:
    rng = np.random.default_rng(0)
    return bytes(rng.choice(np.frombuffer(b'abcdefghijklmnopqrstuvwxyz ' * 3 + b' ' * 5,
                                          np.uint8), size=n))


SMALL = ['--config.model.embed_dim=8', "--config.model.hidden_sizes=(16, 16, 8)",
         '--config.batch_size=4', '--config.data.seq_len=20', '--config.num_train_steps=2',
         '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
         '--config.model.dtype=float32', '--config.sample.length=8',
         '--config.eval_batch_size=4']


@pytest.mark.parametrize('name,make,unit', [('enwik8', enwik8_like, 'byte'),
                                            ('text8', text8_like, 'char')])
def test_config_on_a_stand_in(tmp_path, name, make, unit):
    path = tmp_path / name
    path.write_bytes(make(60_000))
    sizes = ['--config.data.val_size=3000', '--config.data.test_size=3000',
             '--config.eval_max_tokens=1000', f'--config.data.cache_dir={tmp_path}/cache']
    args = [f'--config=configs/{name}.py', f'--config.data.path={path}', *sizes]
    proc = run_cli('charlm.main', *args, f'--workdir={tmp_path}/w', *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Stateful: the first windows of each of the 4 eval streams, 12 x 4 x 20 targets.
    assert f'bits/{unit}' in proc.stderr and 'on 960 of 2,999 targets' in proc.stderr
    proc = run_cli('charlm.evaluate', f'--workdir={tmp_path}/w', '--split=test', '--json')
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r['tokens'] == 2999 and f'bits_per_{unit}' in r  # the whole test split
    if name == 'enwik8':  # a UTF-8 prompt; bytes decode with U+FFFD where a sequence is cut
        proc = run_cli('charlm.sample', f'--workdir={tmp_path}/w', '--prompt=caf\u00e9 ',
                       '--length=30', '--seed=3')
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.startswith('caf\u00e9 ') and 'sampling 1 x 30 bytes' in proc.stderr
    from configs import enwik8, text8
    config = (enwik8 if name == 'enwik8' else text8).get_config()
    config.data.path, config.data.cache_dir = str(path), str(tmp_path / 'cache')
    config.data.val_size = config.data.test_size = 3000
    corpus = data.load_corpus(config)
    assert [len(corpus.tokens[k]) for k in ('train', 'val', 'test')] == [54_000, 3000, 3000]
    if name == 'text8':
        assert corpus.tokenizer.vocab_size == 27
    else:
        assert corpus.tokenizer.kind == 'byte' and 0xC3 in corpus.tokenizer.values


def test_the_configs_do_not_fall_back_to_the_builtin_corpus(tmp_path):
    proc = run_cli('charlm.prepare', '--config=configs/enwik8.py',
                   f'--config.data.cache_dir={tmp_path}')
    assert proc.returncode == 2 and 'corpus file not found: enwik8' in proc.stderr
