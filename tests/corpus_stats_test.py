"""charlm.corpus_stats: sizes, vocabulary and the most frequent characters or words."""

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import assert_one_line_error, run_cli

from charlm import corpus_stats, tokenizers
from charlm.errors import CharLMError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_char_stats_and_chart(tiny_config, tmp_path):
    s = corpus_stats.corpus_stats(tiny_config, top=10)
    assert s['vocab_size'] == 35 and s['tokens'] == s['characters']
    assert sum(s['split_characters'].values()) == s['characters']
    counts = [n for _, n, _ in s['top']]
    assert counts == sorted(counts, reverse=True) and s['top'][0][0] == ' '
    assert s['top'][0][2] == pytest.approx(counts[0] / s['characters'])
    text = corpus_stats.report(s)
    assert '␣' in text and '⏎' in text and 'vocabulary: 35 characters' in text
    out = corpus_stats.draw(s, str(tmp_path / 'chars.png'))
    assert pathlib.Path(out).read_bytes()[:4] == b'\x89PNG'


def test_word_stats_count_unk(tiny_config, tmp_path):
    tiny_config.data.tokenizer = 'word'
    tiny_config.data.max_vocab = 10
    s = corpus_stats.corpus_stats(tiny_config, top=12)
    assert s['vocab_size'] == 10 and s['tokens'] == s['word_tokens']
    covered = sum(n for _, n, _ in s['top'][:9])  # the 9 words besides <unk>
    assert s['unk_share'] == pytest.approx(1 - covered / s['tokens'])
    assert s['top'][0][0] == '\n' and 'word tokens read as <unk>' in corpus_stats.report(s)
    out = corpus_stats.draw(s, str(tmp_path / 'words.png'))
    assert pathlib.Path(out).stat().st_size > 10_000


def test_char_stats_report_the_folded_characters(tiny_config):
    tiny_config.data.min_count = 200  # the tiny corpus's rarer letters fold into U+FFFD
    s = corpus_stats.corpus_stats(tiny_config, top=40)
    folded = s['folded']
    assert folded['characters'] > 0 and s['vocab_size'] == 35 - folded['characters'] + 1
    assert s['unk_share'] * s['tokens'] == pytest.approx(folded['occurrences'])
    assert ('\ufffd', folded['occurrences'], s['unk_share']) in s['top']
    assert 'folded into U+FFFD: ' in corpus_stats.report(s)


def test_visible():
    assert tokenizers.visible(' \n\tx\x07') == '␣⏎⇥xU+0007'


def run(*args):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)


def test_command_line_with_a_config_override(corpus_file, tmp_path):
    proc = run('charlm.corpus_stats', '--config=configs/shakespeare.py',
               f'--config.data.path={corpus_file}', '--top=5', f'--out={tmp_path}/c.png')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'most frequent characters' in proc.stdout and '␣' in proc.stdout
    assert (tmp_path / 'c.png').stat().st_size > 10_000


def test_unknown_tokenizer_is_an_error(tiny_config):
    tiny_config.data.tokenizer = 'bpe'  # was counted as words
    with pytest.raises(CharLMError, match="unknown tokenizer 'bpe'"):
        corpus_stats.corpus_stats(tiny_config)


def test_out_is_checked_before_the_corpus_is_read(corpus_file, tmp_path):
    proc = run_cli('charlm.corpus_stats', '--config=configs/tiny.py',
                   f'--config.data.path={corpus_file}', f'--out={tmp_path}/c.xyz')
    assert_one_line_error(proc, f'cannot write --out={tmp_path}/c.xyz: name a file ending in')
    assert proc.stdout == ''  # no report: nothing was counted
