"""charlm.prepare: corpora tokenized once, memory-mapped, checked on every use."""

import json
import os
import pathlib
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from conftest import SHAKESPEARE_LIKE, assert_one_line_error, run_cli

from charlm import corpus_cache, corpus_reader, data, filelock, prepare, preparing, tokenizers
from charlm.errors import CharLMError

# Multi-byte characters (2, 3 and 4 bytes), a word split across lines, digits, quotes.
TEXT = (SHAKESPEARE_LIKE + "Caf\u00e9 na\u00efve \u2014 o'er the sea, 1599 \u2019tis "
        'true \U0001F600\n') * 12


def config_for(path, cache, **data_fields):
    from configs import tiny
    c = tiny.get_config()
    c.data.path = str(path)
    c.data.cache_dir = str(cache)
    for k, v in data_fields.items():
        c.data[k] = v
    return c


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few bytes: every chunk boundary cuts characters, words and splits."""
    monkeypatch.setattr(corpus_reader, 'CHUNK', 13)


@pytest.mark.parametrize('fields', [
    {}, {'test_fraction': 0.05},
    {'tokenizer': 'word'}, {'tokenizer': 'word', 'lowercase': True, 'max_vocab': 20,
                            'test_fraction': 0.1}])
def test_prepared_splits_equal_the_in_memory_path(tmp_path, small_chunks, fields):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    config = config_for(path, tmp_path / 'cache', **fields)
    corpus = data.load_corpus(config)
    d = config.data
    # What every command did before corpora were prepared: the whole text in memory.
    splits = data.split_text(TEXT, d.val_fraction, d.test_fraction)
    tok = tokenizers.build(d.tokenizer, TEXT, d.max_vocab, d.min_count, d.lowercase)
    assert corpus.tokenizer == tok
    assert set(corpus.tokens) == {k for k, v in splits.items() if v}
    for k, tokens in corpus.tokens.items():
        assert isinstance(tokens, data.TokenFile)
        np.testing.assert_array_equal(tokens[:], tok.encode(splits[k]))
        assert corpus.chars[k] == data.predicted_chars(tok, splits[k])
    assert corpus.meta['dtype'] == 'uint8'


def test_batches_are_bit_for_bit_the_in_memory_ones(tmp_path):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    corpus = data.load_corpus(config_for(path, tmp_path / 'cache'))
    mapped = corpus.tokens['train']
    ids = np.asarray(mapped)
    assert ids.dtype == np.int32 and len(ids) == len(mapped)
    layout = data.Layout(8, 4, 2, 1)
    for step in (0, 7):
        a, b = (data.train_batch(t, 16, step, 0, layout) for t in (mapped, ids))
        for k in a:
            assert a[k].dtype == b[k].dtype == np.int32
            np.testing.assert_array_equal(a[k], b[k])
        a, b = (data.stateful_train_batch(t, 16, step, layout) for t in (mapped, ids))
        np.testing.assert_array_equal(a['inputs'], b['inputs'])
    for batches in (data.eval_batches, data.stateful_eval_batches):
        for a, b in zip(batches(mapped, 16, layout), batches(ids, 16, layout), strict=True):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


def _old_eval_batches(tokens, seq_len, layout):
    """The eval batches as they were built before (the whole split padded in memory)."""
    n_targets = len(tokens) - 1
    n_windows = -(-n_targets // seq_len)
    n_batches = -(-n_windows // layout.global_batch)
    padded = np.zeros(n_batches * layout.global_batch * seq_len + 1, dtype=np.int32)
    padded[:len(tokens)] = tokens
    weights = np.zeros(len(padded) - 1, dtype=np.float32)
    weights[:n_targets] = 1.0
    shape = (n_batches, layout.global_batch, seq_len)
    for arrays in zip(padded[:-1].reshape(shape), padded[1:].reshape(shape),
                      weights.reshape(shape), strict=True):
        yield {k: layout.shard(a[layout.local_rows])
               for k, a in zip(('inputs', 'targets', 'weights'), arrays, strict=True)}


def test_lazy_eval_batches_equal_the_padded_ones():
    tokens = np.arange(3, 260, dtype=np.int32)
    for process in (0, 1):
        layout = data.Layout(4, 4, 2, process)
        new, old = list(data.eval_batches(tokens, 10, layout)), list(
            _old_eval_batches(tokens, 10, layout))
        assert len(new) == len(old)
        for a, b in zip(new, old, strict=True):
            for k in b:  # and 'starts', where each row's window begins
                np.testing.assert_array_equal(a[k], b[k])


def test_bounded_evaluation_is_an_evenly_spread_fixed_subset():
    assert list(data.eval_windows(1001, 10, 0)) == list(range(100))
    w = data.eval_windows(1001, 10, 200)  # 20 of 100 windows
    assert list(w) == list(range(0, 100, 5))
    assert list(data.eval_windows(1001, 10, 5)) == [0]  # at least one window
    tokens = np.arange(1001, dtype=np.int32)
    for devices in (1, 4):
        layout = data.Layout(8, devices, devices)
        batches = list(data.eval_batches(tokens, 10, layout, max_tokens=200))
        targets = np.concatenate([b['targets'][b['weights'] > 0] for b in batches])
        assert len(targets) == 200
        np.testing.assert_array_equal(np.sort(targets)[::10] - 1, w * 10)
    # Stateful: the first windows of every stream.
    layout = data.Layout(4, 1, 1)
    some = list(data.stateful_eval_batches(tokens, 10, layout, max_tokens=80))
    assert len(some) == 2 and len(list(data.stateful_eval_batches(tokens, 10, layout))) == 25


def test_byte_tokens_read_any_file(tmp_path):
    raw = bytes(range(256)) * 3 + 'caf\u00e9 \U0001F600\n'.encode() * 50
    path = tmp_path / 'blob.bin'
    path.write_bytes(raw[:-1] + b'\xff\xfe')  # not UTF-8 anywhere near
    corpus = data.load_corpus(config_for(path, tmp_path / 'cache', tokenizer='byte'))
    tok = corpus.tokenizer
    assert tok.kind == 'byte' and tok.vocab_size == 256
    ids = np.concatenate([corpus.tokens['train'][:], corpus.tokens['val'][:]])
    assert tok.decode_bytes(ids) == path.read_bytes()
    assert corpus.chars['val'] == len(corpus.tokens['val']) - 1
    # Text only: the vocabulary is the bytes seen; prompts are UTF-8; cut sequences decode
    # with replacement characters.
    path.write_text('caf\u00e9 ol\u00e9\n' * 30, encoding='utf-8')
    seen = data.load_corpus(config_for(path, tmp_path / 'cache2', tokenizer='byte')).tokenizer
    assert seen.vocab_size == len(set('caf\u00e9 ol\u00e9\n'.encode()))
    assert seen.decode(seen.encode('caf\u00e9')) == 'caf\u00e9'
    assert seen.decode(seen.encode('caf\u00e9')[:-1]) == 'caf\ufffd'
    with pytest.raises(CharLMError, match=r'bytes not in the vocabulary: \\x7a'):
        seen.encode('z')
    assert tokenizers.from_json(json.loads(json.dumps(seen.to_json()))) == seen
    all256 = data.load_corpus(config_for(path, tmp_path / 'c3', tokenizer='byte',
                                         byte_vocab='all')).tokenizer
    assert all256.vocab_size == 256


def test_splits_by_count_and_dtype(tmp_path):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    corpus = data.load_corpus(config_for(path, tmp_path / 'cache', val_size=300,
                                         test_size=200))
    n = len(TEXT)
    assert {k: len(v) for k, v in corpus.tokens.items()} == {
        'train': n - 500, 'val': 300, 'test': 200}
    np.testing.assert_array_equal(corpus.tokens['test'][:],
                                  corpus.tokenizer.encode(TEXT[-200:]))
    words = data.load_corpus(config_for(path, tmp_path / 'cache', tokenizer='word',
                                        val_size=100))
    all_ids = corpus_words = tokenizers.build('word', TEXT).encode(TEXT)
    assert len(words.tokens['val']) == 100
    np.testing.assert_array_equal(words.tokens['val'][:], corpus_words[-100:])
    assert len(words.tokens['train']) == len(all_ids) - 100
    with pytest.raises(CharLMError, match='nothing is left to train on'):
        data.load_corpus(config_for(path, tmp_path / 'cache', val_size=n - 10, test_size=10))
    assert tokenizers.smallest_dtype(256) == np.uint8
    assert tokenizers.smallest_dtype(257) == np.uint16
    assert tokenizers.smallest_dtype(70_000) == np.uint32


def test_second_use_reads_the_prepared_folder(tmp_path, monkeypatch):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    config = config_for(path, tmp_path / 'cache')
    first, made = data.prepare(config)
    assert made
    calls = []
    monkeypatch.setattr(preparing, 'write', lambda *a: calls.append(a))
    again, made = data.prepare(config)
    assert not made and not calls and again.meta == first.meta
    os.utime(path, ns=(1, 1))  # touched, same content: the fingerprint says it is the same
    assert not data.prepare(config)[1] and not calls


def test_a_changed_corpus_is_prepared_again_with_a_notice(tmp_path):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    config = config_for(path, tmp_path / 'cache')
    before = data.load_corpus(config)
    path.write_text(TEXT.replace('Citizen', 'Zitizen'), encoding='utf-8')  # same size
    notices = []
    prepared, made = data.prepare(config, notice=notices.append)
    assert made and 'changed since it was prepared' in notices[0]
    assert 'Z' in prepared.tokenizer.itos and 'Z' not in before.tokenizer.itos
    # A run holding the old files reads them unchanged.
    assert before.tokenizer.decode(before.tokens['train'][:20]) == TEXT[:20]


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'meta', 'missing'])
def test_a_damaged_folder_is_prepared_again(tmp_path, damage):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    config = config_for(path, tmp_path / 'cache')
    prepared, _ = data.prepare(config)
    train = prepared.path('train')
    if damage == 'truncate':
        train.write_bytes(train.read_bytes()[:-7])
    elif damage == 'flip':
        raw = bytearray(train.read_bytes())
        raw[len(raw) // 2] ^= 1
        train.write_bytes(bytes(raw))
    elif damage == 'meta':
        (prepared.directory / 'meta.json').write_text('{"format": 1, "sou')
    else:
        train.unlink()
    notices = []
    again, made = data.prepare(config, notice=notices.append)
    assert made and 'damaged' in notices[0]
    assert again.meta['splits'] == prepared.meta['splits']


def test_a_failed_preparation_leaves_nothing_trusted(tmp_path, monkeypatch):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    config = config_for(path, tmp_path / 'cache')
    real_write = preparing._SplitWriter.write
    written = []

    def disk_full(self, split, ids):
        if written:
            raise OSError(28, 'No space left on device', str(self.directory / 'val.bin'))
        written.append(split)
        real_write(self, split, ids)

    monkeypatch.setattr(preparing._SplitWriter, 'write', disk_full)
    with pytest.raises(CharLMError, match='cannot write the prepared corpus to .*the disk is '
                       'full.*data.cache_dir'):
        data.prepare(config)
    root = tmp_path / 'cache' / 'prepared'
    left = list(root.iterdir())  # no folder, no temporary; the lock file, free and empty
    assert [p.suffix for p in left] == ['.lock'] and left[0].read_bytes() == b''
    monkeypatch.undo()
    assert data.prepare(config)[1]


def test_a_killed_preparation_is_prepared_again(tmp_path):
    """What a kill -9 leaves (its lock and temporary folder) is cleared by the next run."""
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    config = config_for(path, tmp_path / 'cache')
    directory = corpus_cache.folder(path, preparing.Settings.from_config(config.data),
                               tmp_path / 'cache')
    directory.parent.mkdir(parents=True)
    tmp = directory.with_name(f'.{directory.name}.tmp-somehost-1')
    tmp.mkdir()
    (tmp / 'train.bin').write_bytes(b'half')
    gone = subprocess.Popen(['true'])  # a process that has exited: its pid is free
    gone.wait()
    dead = gone.pid
    lock = directory.with_name(directory.name + '.lock')
    lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead,
                                'boot': filelock._boot_id()}))  # its flock died with it
    notices = []
    prepared, made = data.prepare(config, notice=notices.append)
    assert made and f'held by pid {dead} on' in notices[0] and 'which is gone' in notices[0]
    assert sorted(p.name for p in directory.parent.iterdir()) == [directory.name, lock.name]


def test_one_process_prepares_while_the_others_wait(tmp_path, monkeypatch):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    config = config_for(path, tmp_path / 'cache')
    monkeypatch.setattr(corpus_cache, 'POLL_SECONDS', 0.05)
    directory = corpus_cache.folder(path, preparing.Settings.from_config(config.data),
                               tmp_path / 'cache')
    directory.parent.mkdir(parents=True)
    holder = filelock.FileLock(directory.with_name(directory.name + '.lock'), 'test')
    results, notices = [], []
    waiter = threading.Thread(target=lambda: results.append(
        data.prepare(config, notice=notices.append)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and 'waiting for' in notices[0] and not directory.exists()
    holder.release()
    waiter.join(30)
    assert results and results[0][1]  # it prepared once the holder let go


def test_bad_input_is_one_line(tmp_path):
    empty = tmp_path / 'empty.txt'
    empty.write_bytes(b'')
    with pytest.raises(CharLMError, match='corpus file is empty'):
        data.load_corpus(config_for(empty, tmp_path / 'cache'))
    latin = tmp_path / 'latin1.txt'
    latin.write_bytes(('caf\u00e9 ' * 100).encode('latin-1'))
    with pytest.raises(CharLMError, match=r'not UTF-8 text.*byte 3.*data.tokenizer=byte'):
        data.load_corpus(config_for(latin, tmp_path / 'cache'))
    short = tmp_path / 'short.txt'
    short.write_text('To be, or not to be.\n' * 4)
    with pytest.raises(CharLMError, match='fewer than one window'):
        data.load_corpus(config_for(short, tmp_path / 'cache'))
    a_file = tmp_path / 'not_a_folder'
    a_file.write_text('x')
    with pytest.raises(CharLMError, match='cannot write the prepared corpus'):
        data.load_corpus(config_for(latin, a_file, tokenizer='byte'))
    with pytest.raises(CharLMError, match="unknown data.byte_vocab 'some'"):
        data.load_corpus(config_for(latin, tmp_path / 'cache', tokenizer='byte',
                                    byte_vocab='some'))


def test_a_corpus_changing_while_it_is_prepared(tmp_path, monkeypatch):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    real_scan = preparing._scan

    def scan_then_append(*args):
        out = real_scan(*args)
        with open(path, 'a', encoding='utf-8') as f:
            f.write('more text\n')
        return out

    monkeypatch.setattr(preparing, '_scan', scan_then_append)
    with pytest.raises(CharLMError, match='changed while it was being prepared'):
        data.prepare(config_for(path, tmp_path / 'cache'))
    assert [p.suffix for p in (tmp_path / 'cache' / 'prepared').iterdir()] == ['.lock']


def test_command_prepares_and_checks(tmp_path):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    args = ('charlm.prepare', '--config=configs/tiny.py', f'--config.data.path={path}',
            f'--config.data.cache_dir={tmp_path}/cache')
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith('prepared: ') and 'train.bin' in proc.stdout
    assert 'finished: ' in proc.stderr and 'MB/s' in proc.stderr  # the progress bar's last line
    proc = run_cli(*args)
    assert proc.stdout.startswith('already prepared (checked)')
    proc = run_cli('charlm.prepare', '--config=configs/tiny.py',
                   f'--config.data.path={tmp_path}/missing.txt')
    assert_one_line_error(proc, 'corpus file not found')


def test_builtin_corpus_is_prepared_too(tmp_path):
    from configs import tiny
    config = tiny.get_config()
    config.data.cache_dir = str(tmp_path)
    corpus = data.load_corpus(config)
    assert corpus.meta['source']['name'] == data.BUILTIN
    assert len(corpus.tokens['train']) > 3_000_000 and corpus.meta['dtype'] == 'uint8'
    assert pathlib.Path(corpus.meta['source']['path']).parent == tmp_path


def test_rare_characters_fold_into_u_fffd(tmp_path, small_chunks):
    path = tmp_path / 'c.txt'
    path.write_text(TEXT, encoding='utf-8')
    config = config_for(path, tmp_path / 'cache', max_vocab=30)
    corpus = data.load_corpus(config)
    tok = tokenizers.build('char', TEXT, 30)
    assert corpus.tokenizer == tok and tok.folds and tok.vocab_size == 30
    splits = data.split_text(TEXT, config.data.val_fraction, config.data.test_fraction)
    for k, tokens in corpus.tokens.items():
        np.testing.assert_array_equal(tokens[:], tok.encode(splits[k]))
    gone = sorted(set(TEXT) - set(tok.itos))
    folded = corpus.meta['folded']
    assert folded['characters'] == len(gone)
    assert folded['occurrences'] == sum(TEXT.count(c) for c in gone)
    prepared, _ = data.prepare(config)
    assert 'folded into U+FFFD: ' in prepare.report(prepared, False)
    # the unfolded corpus keeps its folder (its key has no max_vocab)
    assert corpus_cache.folder(path, preparing.Settings(), tmp_path) != corpus_cache.folder(
        path, preparing.Settings(max_vocab=30), tmp_path)
    assert 'max_vocab' not in preparing.Settings().key()
