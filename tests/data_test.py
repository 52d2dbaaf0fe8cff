import numpy as np
import pytest

from charlm import data
from charlm.errors import CharLMError


def test_builtin_corpus_is_plain_play_text(tmp_path):
    text = data.builtin_shakespeare(tmp_path)
    assert len(text) > 4_000_000
    for mark in ('**', '_', '#', '\\'):
        assert mark not in text
    assert 'HAMLET:\n' in text and '\nTo be, or not to be' in text
    assert list(tmp_path.glob('shakespeare-*.txt'))  # cached
    assert data.builtin_shakespeare(tmp_path) == text


def test_markdown_conversion():
    md = ('# Play\n\n## ACT I\n\n### SCENE I. A place.\n\n_Enter BERNARDO and\nFRANCISCO_\n\n'
          "**BERNARDO**  \nWho's there?  \n_\\[Aside]_ Stand.\n\n**FRANCISCO**  \n_Exit_\n\n"
          '**BERNARDO**  \nHe.\n')
    assert data.play_markdown_to_text(md) == "BERNARDO:\nWho's there?\nStand.\n\nBERNARDO:\nHe.\n"


def test_split_fractions():
    text = ''.join(chr(65 + i % 26) for i in range(1000))
    s = data.split_text(text, 0.1)
    assert (len(s['train']), len(s['val']), len(s['test'])) == (900, 100, 0)
    assert s['train'] + s['val'] == text
    s = data.split_text(text, 0.1, 0.05)
    assert (len(s['train']), len(s['val']), len(s['test'])) == (850, 100, 50)
    with pytest.raises(CharLMError):
        data.split_text(text, 0.0)


@pytest.mark.parametrize('content,match', [
    (None, 'not found'), (b'', 'empty'), (b'caf\xe9 latin-1', 'not UTF-8')])
def test_bad_corpus_files(tmp_path, content, match):
    path = tmp_path / 'c.txt'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CharLMError, match=match):
        data.load_text(str(path))


def test_train_batch_shapes_and_shift():
    tokens = np.arange(1000, dtype=np.int32)
    layout = data.Layout(global_batch=8, num_devices=4, local_devices=4)
    b = data.train_batch(tokens, 10, step=3, seed=0, layout=layout)
    assert b['inputs'].shape == b['targets'].shape == (4, 2, 10)
    np.testing.assert_array_equal(b['targets'][..., :-1], b['inputs'][..., 1:])
    np.testing.assert_array_equal(b['targets'], b['inputs'] + 1)  # consecutive tokens
    again = data.train_batch(tokens, 10, step=3, seed=0, layout=layout)
    np.testing.assert_array_equal(b['inputs'], again['inputs'])
    other = data.train_batch(tokens, 10, step=4, seed=0, layout=layout)
    assert not np.array_equal(b['inputs'], other['inputs'])


def test_same_global_batch_on_any_device_count():
    tokens = np.arange(1000, dtype=np.int32)
    one = data.train_batch(tokens, 10, 7, 0, data.Layout(8, 1, 1))['inputs'].reshape(8, 10)
    four = data.train_batch(tokens, 10, 7, 0, data.Layout(8, 4, 4))['inputs'].reshape(8, 10)
    np.testing.assert_array_equal(one, four)
    # Two processes of two devices each take disjoint halves of the same global batch.
    halves = [data.train_batch(tokens, 10, 7, 0, data.Layout(8, 4, 2, p))['inputs']
              for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves).reshape(8, 10), four)


def test_layout_rejects_indivisible_batch():
    with pytest.raises(CharLMError, match='not divisible'):
        data.Layout(global_batch=6, num_devices=4, local_devices=4)


def test_eval_batches_cover_every_target_once():
    tokens = np.arange(1, 258, dtype=np.int32)  # 256 targets, not a multiple of anything
    layout = data.Layout(global_batch=4, num_devices=2, local_devices=2)
    batches = list(data.eval_batches(tokens, 10, layout))
    targets = np.concatenate([b['targets'][b['weights'] > 0] for b in batches])
    np.testing.assert_array_equal(np.sort(targets), tokens[1:])
    for b in batches:
        assert b['inputs'].shape == (2, 2, 10)
        real = b['weights'] > 0
        np.testing.assert_array_equal(b['targets'][real], b['inputs'][real] + 1)


def test_check_length():
    with pytest.raises(CharLMError, match='fewer than one window'):
        data.check_length('val', np.zeros(5, np.int32), seq_len=5)
    data.check_length('val', np.zeros(6, np.int32), seq_len=5)


def test_stateful_batches_continue_streams_and_reset_each_epoch():
    tokens = np.arange(1000, dtype=np.int32)
    layout = data.Layout(global_batch=4, num_devices=2, local_devices=2)
    per_epoch = data.stream_steps(1000, 10, 4)  # streams of 250 tokens
    assert per_epoch == 24
    b0 = data.stateful_train_batch(tokens, 10, 0, layout)
    b1 = data.stateful_train_batch(tokens, 10, 1, layout)
    assert b0['reset'].shape == (2, 2) and b0['reset'].all() and not b1['reset'].any()
    rows0, rows1 = b0['inputs'].reshape(4, 10), b1['inputs'].reshape(4, 10)
    np.testing.assert_array_equal(rows0[:, 0], [0, 250, 500, 750])
    np.testing.assert_array_equal(rows1[:, 0], rows0[:, -1] + 1)  # row r continues row r
    np.testing.assert_array_equal(b0['targets'], b0['inputs'] + 1)
    again = data.stateful_train_batch(tokens, 10, per_epoch, layout)
    np.testing.assert_array_equal(again['inputs'], b0['inputs'])
    assert again['reset'].all()


def test_stateful_eval_batches_cover_every_target_once_in_stream_order():
    tokens = np.arange(1, 258, dtype=np.int32)
    layout = data.Layout(global_batch=4, num_devices=2, local_devices=2)
    batches = list(data.stateful_eval_batches(tokens, 10, layout))
    targets = np.concatenate([b['targets'][b['weights'] > 0] for b in batches])
    np.testing.assert_array_equal(np.sort(targets), tokens[1:])
    first = np.concatenate([b['inputs'].reshape(4, 10) for b in batches], axis=1)
    assert (np.diff(first[0]) == 1).all()  # one stream is read in order across batches


def test_stateful_needs_a_window_per_stream():
    with pytest.raises(CharLMError, match='streams'):
        data.stream_steps(100, 10, 16)
