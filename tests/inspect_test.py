"""charlm.inspect and charlm.interpret: the capture against the model, the tables, the page."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import SHAKESPEARE_LIKE, assert_one_line_error, run_cli

from charlm import checkpointing, interpret, interpret_report, runs, steps, tokenizers
from charlm import inspect as inspect_cmd
from charlm import model as model_lib
from charlm.activations import capture as gates_capture  # charlm.gates' single stream
from charlm.errors import CharLMError

pytestmark = pytest.mark.xdist_group('inspect')  # its module-scoped fixture: one worker

TEXT = SHAKESPEARE_LIKE * 3 + 'He said "stay (a while)" and went.\n'


def _random_like(abstract, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(0, 0.5, x.shape).astype(x.dtype), abstract)


def _save_checkpoint(workdir, config, text, kind='char'):
    """A checkpoint as training writes it, with random parameters (no training, no compile)."""
    tok = tokenizers.build(kind, text)
    model = steps.make_model(config, tok.vocab_size)
    tx = steps.make_optimizer(config)
    state = _random_like(jax.eval_shape(lambda: steps.create_state(model, tx, jax.random.key(0))))
    ckpts = checkpointing.Checkpoints(str(workdir))
    ckpts.save(5, state, tok.to_json(), config.to_dict(), {}, best=True)
    ckpts.wait()
    ckpts.close()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """configs/tiny.py (2 x 24 LSTM) with random parameters, its corpus written here."""
    from configs import tiny

    tmp = tmp_path_factory.mktemp('inspect')
    corpus = tmp / 'corpus.txt'
    corpus.write_text(SHAKESPEARE_LIKE * 40 + TEXT, encoding='utf-8')
    config = tiny.get_config()
    config.data.path = str(corpus)
    config.data.cache_dir = str(tmp / 'cache')
    config.model.hidden_sizes = (24, 24)
    _save_checkpoint(tmp / 'run', config, corpus.read_text(encoding='utf-8'))
    text = tmp / 'text.txt'
    text.write_text(TEXT, encoding='utf-8')
    return tmp, config


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_streams_read_as_the_model_and_gates_read_each_one(cell):
    """90 tokens as 3 streams of 32 steps (the last padded), chunks of 16: each stream equals
    charlm.gates' capture of its text from a zero state, and the head's logits the model's."""
    m = model_lib.RecurrentLM(vocab_size=11, embed_dim=5, hidden_sizes=(8, 6), cell=cell)
    ids = np.random.default_rng(1).integers(0, 11, 90)
    params = _random_like(jax.eval_shape(m.init, jax.random.key(0), m.init_carry(1),
                                         ids[None, :4].astype(np.int32)))['params']
    cls = np.zeros((90, len(interpret.CLASSES)), bool)
    cap = interpret.capture(m, params, ids, cls, streams=3, chunk=16)
    assert cap['streams'] == 3 and cap['logits_error'] < 1e-5
    names = interpret.gate_names(cell)
    state, want_state = ('cell', 'cell state') if cell == 'lstm' else ('hidden', 'hidden state')
    streams = [slice(0, 32), slice(32, 64), slice(64, 90)]
    for s in streams:
        for layer in (0, 1):
            want = gates_capture(m, params, ids[None, s], layer)
            got = cap['layers'][layer]
            np.testing.assert_allclose(got['states'][state][s], want[want_state],
                                       rtol=1e-5, atol=1e-6)
            for g in names:
                np.testing.assert_allclose(got['mean'][g][s], want[g].mean(1),
                                           rtol=1e-5, atol=1e-6)
        # each stream's last step predicts the next stream's first token
        logp = jax.nn.log_softmax(want['model_logits']) / np.log(2)
        n = s.stop - s.start - (s.stop == 90)
        np.testing.assert_allclose(cap['bits'][s.start:s.start + n],
                                   -logp[np.arange(n), ids[s.start + 1:s.start + n + 1]],
                                   rtol=1e-5)
    assert cap['bits'].shape == (89,) and cap['top_ids'].shape == (90, 5)
    sat = interpret.saturation(cap)[1][names[0]]
    g = np.concatenate([gates_capture(m, params, ids[None, s], 1)[names[0]] for s in streams])
    np.testing.assert_allclose(sat['left'], (g < 0.1).mean(0), atol=1e-6)
    np.testing.assert_allclose(sat['right'], (g > 0.9).mean(0), atol=1e-6)


def test_character_classes_and_text_features():
    text = 'ROMEO:\nHi, "you" (a b).\nNo: so!\n'
    cls = interpret.classes(text)
    pick = {name: ''.join(c for c, m in zip(text, cls[:, k], strict=True) if m)
            for k, name in enumerate(interpret.CLASSES)}
    assert pick['word onset'] == 'RHyabNs' and pick['word interior'] == 'OMEOiouoo'
    assert pick['speaker newline'] == '\n' and pick['speaker turn'] == ':\n'
    assert pick['newline'] == '\n\n' and pick['sentence boundary'] == '.\n!\n'
    assert pick['punctuation'] == ':,""().:!' and pick['uppercase'] == 'ROMEOHN'
    f = interpret.features(text)
    col = {name: f[:, k] for k, name in enumerate(interpret.FEATURES)}
    assert ''.join(c for c, q in zip(text, col['in quotes'], strict=True) if q) == '"you'
    assert ''.join(c for c, q in zip(text, col['in brackets'], strict=True) if q) == '(a b'
    assert col['line position'][:8].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]
    assert col['speaker line'].sum() == 6 and col['vowel'].sum() == 9


def test_block_bootstrap_interval_covers_a_known_difference():
    rng = np.random.default_rng(0)
    mask = rng.random(20_000) < 0.3
    values = rng.normal(0, 1, 20_000) + 0.2 * mask
    mean, samples = interpret.block_bootstrap(values, np.stack([mask, ~mask], 1))
    diff = samples[:, 0] - samples[:, 1]
    lo, hi = np.percentile(diff, [2.5, 97.5])
    assert lo < 0.2 < hi and lo > 0.1 and mean[0] - mean[1] == pytest.approx(0.2, abs=0.05)


def test_inspect_writes_every_output_and_the_api_returns_the_same(checkpoint, tmp_path):
    tmp, config = checkpoint
    out = tmp_path / 'out'
    tables = inspect_cmd.inspect(str(tmp / 'run'), str(out), text_file=str(tmp / 'text.txt'))
    assert sorted(p.name for p in out.iterdir()) == sorted(interpret_report.OUTPUTS)
    assert [p.name for p in tmp_path.iterdir()] == ['out']  # no temporary folder left
    claims = json.loads((out / 'claims.json').read_text())
    assert tables['logits_error'] < 1e-5 and claims['chars'] == len(TEXT)
    assert [v['claim'] for v in claims['claims']] == [c[0] for c in interpret.CLAIMS]
    for v in claims['claims']:
        assert [r['layer'] for r in v['layers']] == [0, 1]
        for r in v['layers']:
            assert r['low'] <= r['difference'] <= r['high']
            assert r['verdict'].removesuffix(', but small (under 0.02)') in (
                'holds', 'the opposite holds', 'no difference')
            assert r['holds'] == r['verdict'].startswith('holds')
    forget = claims['layers'][0]['forget']
    assert len(forget['mean']) == len(interpret.CLASSES)
    assert len(claims['saturation'][1]['output']['left']) == 24
    units = json.loads((out / 'units.json').read_text())['units']
    assert len(units) == 2 * 2 * len(interpret.FEATURES)  # layers x (cell, hidden) x features
    row = next(u for u in units if u['feature'] == 'line position' and u['state'] == 'cell')
    assert len(row['units']) == 5 and abs(row['r'][0]) >= abs(row['r'][-1])
    assert row['probe_r2'] <= 1 and row['unit_r2'] <= 1
    ngram = json.loads((out / 'ngram.json').read_text())
    assert ngram['orders'] == list(range(1, 10)) and len(ngram['bits_per_char']) == 9
    assert ngram['train_chars'] > 9000
    assert '| claim | layer |' in (out / 'claims.md').read_text()
    assert (out / 'saturation.png').read_bytes()[:4] == b'\x89PNG'
    # Run.inspect: the same tables from Python
    api = runs.find(str(tmp / 'run')).inspect(TEXT)
    np.testing.assert_allclose(api['ngram']['bits_per_char'], tables['ngram']['bits_per_char'])
    np.testing.assert_allclose(api['saturation'][0]['forget']['left'],
                               tables['saturation'][0]['forget']['left'])
    # a second run replaces the first's output; the split reads the run's own corpus
    tables = inspect_cmd.inspect(str(tmp / 'run'), str(out), split='val', max_chars=1000)
    assert tables['chars'] == 1000 and 'val split' in (out / 'claims.json').read_text()


@pytest.mark.parametrize('case,match', [
    ('word', 'inspect reads character models, and this is a word model'),
    ('unseen', "characters the model never saw in training: '€'"),
    ('empty', 'corpus file is empty'),
    ('short', 'the text has 20 characters: inspect needs at least 200'),
    ('out', 'is not writable'),
    ('out-in-file', 'is not a directory'),
    ('both', 'name the text: --text_file=FILE or --split=val'),
])
def test_bad_input_is_an_error_before_any_work(checkpoint, tmp_path, case, match):
    tmp, config = checkpoint
    text = tmp_path / 'text.txt'
    text.write_text({'unseen': TEXT + '€', 'empty': '', 'short': TEXT[:20]}.get(case, TEXT))
    workdir, out = tmp / 'run', tmp_path / 'out'
    kwargs = dict(text_file=str(text))
    if case == 'word':
        workdir = tmp_path / 'word'
        config = config.copy_and_resolve_references()
        config.data.tokenizer = 'word'
        _save_checkpoint(workdir, config, TEXT, kind='word')
    if case == 'out':
        os.chmod(tmp_path, 0o555)
    if case == 'out-in-file':
        out = text / 'out'
    if case == 'both':
        kwargs['split'] = 'val'
    try:
        if case == 'out' and os.access(tmp_path, os.W_OK):
            pytest.skip('running as a user who can write anywhere')
        with pytest.raises(CharLMError, match=match):
            inspect_cmd.inspect(str(workdir), str(out), **kwargs)
    finally:
        os.chmod(tmp_path, 0o755)
    assert not (tmp_path / 'out').exists() and not list(tmp_path.glob('.out*'))


def test_the_command_prints_one_line_errors(checkpoint, tmp_path):
    tmp, _ = checkpoint
    (tmp_path / 'out').write_text('a file')
    proc = run_cli('charlm.inspect', f'--workdir={tmp}/run', f'--text_file={tmp}/text.txt',
                   f'--out={tmp_path}/out')
    assert_one_line_error(proc, 'it is a file (name a folder)')
    os.makedirs(tmp_path / 'mine')
    (tmp_path / 'mine' / 'notes.txt').write_text('keep me')
    proc = run_cli('charlm.inspect', f'--workdir={tmp}/run', f'--text_file={tmp}/text.txt',
                   f'--out={tmp_path}/mine')
    assert_one_line_error(proc, 'it holds other files (notes.txt)')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine', 'out']


CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


def test_the_page_works_in_a_real_browser(checkpoint, tmp_path):
    """Headless Chromium opens index.html offline: no script error, the units listed, a
    click on a unit recolours the text, and hovering shows both models' guesses."""
    if CHROMIUM is None:
        pytest.skip('no chromium on this machine (Debian: apt-get install chromium)')
    sync_api = pytest.importorskip('playwright.sync_api')
    tmp, _ = checkpoint
    out = tmp_path / 'out'
    inspect_cmd.inspect(str(tmp / 'run'), str(out), text_file=str(tmp / 'text.txt'))
    args = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
            '--disable-background-networking', '--disable-component-update', '--disable-sync']
    with sync_api.sync_playwright() as p:  # a fresh profile: --user-data-dir, set by playwright
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / 'profile'), executable_path=CHROMIUM, args=args, headless=True,
            viewport={'width': 1200, 'height': 900})
        try:
            page = browser.new_page()
            errors, requests = [], []
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
            page.on('request', lambda r: requests.append(r.url))
            page.goto((out / 'index.html').as_uri())
            spans = page.locator('#text span')
            assert spans.count() == len(TEXT)
            buttons = page.locator('button.unit')
            assert buttons.count() >= 6

            def colours():
                return page.eval_on_selector_all(
                    '#text span', 'els => els.map(e => e.style.backgroundColor)')

            before = colours()
            key = buttons.nth(0).get_attribute('data-key')
            other = next(i for i in range(buttons.count())
                         if buttons.nth(i).get_attribute('data-key') != key)
            buttons.nth(other).click()
            after = colours()
            assert after != before and len(set(after)) > 3
            spans.nth(40).hover()
            tip = page.locator('#tip')
            assert tip.is_visible() and 'gram' in tip.inner_text()
            assert page.locator('#saturation').evaluate('e => e.naturalWidth') > 100
            assert page.locator('#claims tr').count() == 1 + 2 * len(interpret.CLAIMS)
            page.screenshot(path=str(tmp_path / 'page.png'), full_page=True)
            if os.environ.get('CHARLM_SCREENSHOT'):
                shutil.copy(tmp_path / 'page.png', os.environ['CHARLM_SCREENSHOT'])
        finally:
            browser.close()
    assert not errors, errors
    assert all(u.startswith(('file:', 'data:')) for u in requests), requests
    assert (tmp_path / 'page.png').stat().st_size > 10_000
