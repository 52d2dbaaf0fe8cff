"""cli: the host allocator set-up, config key errors and output path checks."""

import os
import platform
import subprocess
import sys

import pytest
from conftest import ROOT, assert_one_line_error, run_cli

from charlm import cli
from charlm.errors import CharLMError

# Mallocs, writes and frees a 64 MiB block twice; prints the page faults of the second time.
_REUSE = """
import ctypes, resource, sys
from charlm import cli
if sys.argv[1] == 'tuned':
    cli.host_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch():  # plain malloc: numpy asks for huge pages, XLA does not
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)  # written, so every page is faulted in
    libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_touch_faults(mode):
    env = {k: v for k, v in os.environ.items() if k != 'CHARLM_HOST_ALLOCATOR'}
    out = subprocess.run([sys.executable, '-c', _REUSE, mode], capture_output=True, text=True,
                         check=True, env=env)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc only')
def test_host_allocator_reuses_freed_blocks():
    # glibc's default: a 64 MiB block is a fresh mmap each time, 16k page faults.
    assert _second_touch_faults('default') > 10_000
    # Tuned: the freed block is reused, no new pages.
    assert _second_touch_faults('tuned') < 1_000


@pytest.mark.parametrize('key,match', [
    ('model.hiden_size', 'unknown config key model.hiden_size: did you mean model.hidden_size?'),
    ('modle.x', 'unknown config key modle.x: did you mean model? model has no x '
                '(its keys: adaptive_cutoffs, adaptive_div, cell, '),
    ('modle.hiden_size', 'unknown config key modle.hiden_size: did you mean model.hidden_size?'),
    ('modle', 'unknown config key modle: did you mean model?'),
    ('zzz', 'unknown config key zzz: the config has no zzz (its keys: adam_b2, batch_size, '),
    ('model.hidden_size.x', 'unknown config key model.hidden_size.x: model.hidden_size is a '
                            'value (16), not a section'),
])
def test_unknown_config_key_names_the_whole_key(tiny_config, key, match):
    assert cli.unknown_config_key(tiny_config, ['seed', 'model.hidden_size', key]).startswith(match)
    assert cli.unknown_config_key(tiny_config, ['seed', 'data.path', 'model']) is None


@pytest.mark.parametrize('arg,match', [
    ('--config.model.hiden_size=3', 'unknown config key model.hiden_size: did you mean '
                                    'model.hidden_size?'),
    ('--config.modle.x=1', 'unknown config key modle.x: did you mean model? model has no x'),
])
def test_misspelt_config_key_is_one_clean_line(tmp_path, arg, match):
    proc = run_cli('charlm.main', '--config=configs/tiny.py', f'--workdir={tmp_path}/w', arg)
    assert_one_line_error(proc, match)
    assert '\\n' not in proc.stderr and 'Did you mean' not in proc.stderr
    assert not (tmp_path / 'w').exists()


def test_check_output(tmp_path):
    figures = cli.figure_formats()
    assert {'png', 'pdf', 'svg'} <= set(figures)
    assert cli.check_output(str(tmp_path / 'a.png'), figures) == tmp_path / 'a.png'
    assert cli.check_output(str(tmp_path / 'a.PDF'), figures) == tmp_path / 'a.PDF'
    assert cli.check_output(str(tmp_path / 'a.txt')) == tmp_path / 'a.txt'  # any name
    (tmp_path / 'file').write_text('x')
    for path, match in [
        (tmp_path / 'a.xyz', r'cannot write --out=.*a\.xyz: name a file ending in .*\.png'),
        (tmp_path / 'a', 'name a file ending in'),  # matplotlib would write a.png
        (tmp_path, 'it is a directory'),
        (tmp_path / 'nope' / 'a.png', f'no directory {tmp_path}/nope'),
        (tmp_path / 'file' / 'a.png', f'{tmp_path}/file is not a directory'),
    ]:
        with pytest.raises(CharLMError, match=match):
            cli.check_output(str(path), figures)
    with pytest.raises(CharLMError, match='--json=/'):
        cli.check_output('/', flag='--json')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']  # nothing written


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes in read-only directories')
def test_check_output_read_only(tmp_path):
    (tmp_path / 'ro').mkdir()
    (tmp_path / 'ro.png').write_text('x')
    (tmp_path / 'ro.png').chmod(0o444)
    (tmp_path / 'ro').chmod(0o555)
    try:
        with pytest.raises(CharLMError, match='is not writable'):
            cli.check_output(str(tmp_path / 'ro' / 'a.png'))
        with pytest.raises(CharLMError, match='the file is read-only'):
            cli.check_output(str(tmp_path / 'ro.png'))
    finally:
        (tmp_path / 'ro').chmod(0o755)


def test_every_command_imports_with_every_other():
    """Flags are defined when a command runs, so a notebook can import them all."""
    modules = ['main', 'sample', 'bench', 'evaluate', 'gates', 'compare', 'plot', 'corpus_stats']
    code = '; '.join(f'import charlm.{m}' for m in modules) + '; print("imported")'
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and 'imported' in proc.stdout, proc.stderr[-2000:]


# A command that logs one line and initialises JAX's backends (where the TPU notice is made).
_LOGS = """
from absl import app, logging
from charlm import cli

@cli.command
def main(argv):
    import jax
    jax.devices()
    logging.info('step 50/3000  loss 3.8732')
    logging.warning('a warning')

app.run(main)
"""


def _stderr_of(*flags, tty: bool) -> str:
    """The command's stderr, on a pseudo-terminal (as a person sees it) or a pipe."""
    import pty

    env = dict(os.environ, JAX_PLATFORMS='')  # let JAX look for a TPU, as on a user's machine
    if not tty:
        return subprocess.run([sys.executable, '-c', _LOGS, *flags], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60).stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, '-c', _LOGS, *flags], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    return b''.join(chunks).decode().replace('\r\n', '\n')


def test_a_terminal_gets_plain_lines_and_files_keep_the_prefix():
    plain = _stderr_of(tty=True)
    assert 'step 50/3000  loss 3.8732\n' in plain and 'warning: a warning\n' in plain
    assert '] step 50' not in plain and 'Unable to initialize backend' not in plain, plain
    for flags, tty in (((), False), (('--logtostderr',), True)):
        prefixed = _stderr_of(*flags, tty=tty)
        assert '] step 50/3000  loss 3.8732' in prefixed, (flags, prefixed)
        assert 'Unable to initialize backend' not in prefixed, prefixed
