"""configs/enwik8.py and configs/text8.py on small synthetic stand-ins of their files."""

import io
import logging

import numpy as np
import pytest
from conftest import run_cli

from charlm import data, evaluate, sample, train


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


SMALL = {'model.embed_dim': 8, 'model.hidden_sizes': (16, 16, 8), 'batch_size': 4,
         'data.seq_len': 20, 'num_train_steps': 2, 'eval_every_steps': 2,
         'checkpoint_every_steps': 2, 'model.dtype': 'float32', 'sample.length': 8,
         'eval_batch_size': 4, 'data.val_size': 3000, 'data.test_size': 3000,
         'eval_max_tokens': 1000}


@pytest.mark.parametrize('name,make,unit', [('enwik8', enwik8_like, 'byte'),
                                            ('text8', text8_like, 'char')])
def test_config_on_a_stand_in(tmp_path, caplog, name, make, unit):
    from configs import enwik8, text8
    path = tmp_path / name
    path.write_bytes(make(60_000))
    config = (enwik8 if name == 'enwik8' else text8).get_config()
    config.data.path, config.data.cache_dir = str(path), str(tmp_path / 'cache')
    for key, value in SMALL.items():
        section, _, field = key.rpartition('.')
        (config[section] if section else config)[field] = value
    corpus = data.load_corpus(config)
    assert [len(corpus.tokens[k]) for k in ('train', 'val', 'test')] == [54_000, 3000, 3000]
    if name == 'text8':
        assert corpus.tokenizer.vocab_size == 27
    else:
        assert corpus.tokenizer.kind == 'byte' and 0xC3 in corpus.tokenizer.values
    with caplog.at_level(logging.INFO):
        result = train.train_and_evaluate(config, str(tmp_path / 'w'))
    # Stateful: the first windows of each of the 4 eval streams, 12 x 4 x 20 targets.
    assert f'bits/{unit}' in caplog.text and 'on 960 of 2,999 targets' in caplog.text
    assert result['val_targets'] == 960 and f'val_bits_per_{unit}' in result
    r = evaluate.evaluate(str(tmp_path / 'w'), split='test')
    assert r['tokens'] == 2999 and f'bits_per_{unit}' in r  # the whole test split
    if name == 'enwik8':  # a UTF-8 prompt; bytes decode with U+FFFD where a sequence is cut
        texts = sample.run(str(tmp_path / 'w'), 'caf\u00e9 ', 30, seed=3, out=io.StringIO())
        assert texts[0].startswith('caf\u00e9 ') and len(texts[0].encode()) >= 30


def test_the_configs_do_not_fall_back_to_the_builtin_corpus(tmp_path):
    proc = run_cli('charlm.prepare', '--config=configs/enwik8.py',
                   f'--config.data.cache_dir={tmp_path}')
    assert proc.returncode == 2 and 'corpus file not found: enwik8' in proc.stderr
