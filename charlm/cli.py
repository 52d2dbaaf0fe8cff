"""What every charlm command line shares: one-line errors and device set-up."""

from __future__ import annotations

import difflib
import functools
import os
import pathlib
import re
import sys
from collections.abc import Collection, Iterable

from absl import flags, logging
from ml_collections import ConfigDict

from charlm import jax_private
from charlm.errors import CharLMError, Stopped


def _one_line(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:  # ConfigDict: "'modle'\nDid you mean ...?"
        return 'unknown config key ' + '; '.join(str(e.args[0]).splitlines())
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if 'Failed loading config file' in str(e):  # the reason is the last line
        return f'cannot load the config file: {lines[-1]}'
    return '; '.join(lines)


def fail(message: str) -> None:
    print(f'charlm: error: {message}', file=sys.stderr)
    sys.exit(2)


def compilation_cache() -> None:
    """JAX's persistent compilation cache, so a resumed or repeated run skips compiling.

    CHARLM_COMPILATION_CACHE names the folder (default ~/.cache/charlm/jax); '' turns it off.
    """
    import os

    import jax

    path = os.environ.get('CHARLM_COMPILATION_CACHE',
                          os.path.join(os.path.expanduser('~'), '.cache', 'charlm', 'jax'))
    if path:
        jax.config.update('jax_compilation_cache_dir', path)


def host_allocator() -> None:
    """Keeps freed host memory in the process, so XLA:CPU does not page-fault every step.

    XLA:CPU takes each step's temporaries as one large block (214 MB for the default
    config), which glibc's malloc serves with a fresh mmap and unmaps when the step ends:
    the next step then pays a page fault and a kernel page-zeroing for every 4 KiB of it
    (52k faults, about a fifth of a CPU step). One arena, no mmap and a high trim threshold
    let the block be reused, as a caching allocator would. It must run before JAX starts its
    threads (they get arenas of their own otherwise); glibc only, a no-op elsewhere.
    CHARLM_HOST_ALLOCATOR=default leaves malloc alone.
    """
    import ctypes
    import ctypes.util
    import os
    import sys

    if os.environ.get('CHARLM_HOST_ALLOCATOR') == 'default' or not sys.platform.startswith(
            'linux'):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs: nothing to tune
        return
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's malloc.h
    mallopt(m_arena_max, 1)
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)  # the largest int: freed memory stays for reuse


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a bad flag, config file or config key as one line, exit 2.

    Config files load lazily, so each config flag is read here to surface its errors.
    """
    try:
        rest = flags.FLAGS(argv)
        if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
            flags.FLAGS.config.keys()
    except flags.Error as e:
        fail(_one_line(e.__cause__ or e).replace('flag --', '--'))
    except (KeyError, AttributeError, TypeError, IndexError) as e:  # how a missing key shows
        fail(_unknown_override(argv) or _one_line(e))
    except (OSError, ValueError, SyntaxError) as e:
        fail(_one_line(e))
    return rest


def unknown_config_key(config: ConfigDict, keys: Iterable[str]) -> str | None:
    """What is wrong with the first of the dotted `keys` that `config` lacks; None if none."""
    for key in keys:
        if '[' in key:  # an index into a list: left to ml_collections
            continue
        node, path, fixed = config, [], ''
        for name in key.split('.'):
            where = '.'.join(path) or 'the config'
            if not isinstance(node, ConfigDict):
                return (f'unknown config key {key}: {fixed}{where} is a value ({node!r}), '
                        'not a section')
            if name not in node:
                close = difflib.get_close_matches(name, list(node.keys()), n=1)
                if not close:
                    return (f'unknown config key {key}: {fixed}{where} has no {name} '
                            f'(its keys: {", ".join(node.keys())})')
                name = close[0]
                fixed = f'did you mean {".".join([*path, name])}? '
            node = node[name]
            path.append(name)
        if fixed:
            return f'unknown config key {key}: did you mean {".".join(path)}?'
    return None


def _unknown_override(argv: list[str]) -> str | None:
    """unknown_config_key for argv's --config.KEY overrides, on the config loaded afresh.

    ml_collections says only the missing name, or not even that (a str indexed by a key).
    """
    if 'config' not in flags.FLAGS:
        return None
    argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
    source, keys = None, []
    for i, arg in enumerate(argv):
        if m := re.match(r'--?config(?:=(.*))?$', arg):
            source = m[1] if m[1] is not None else (argv[i + 1:] or [None])[0]
        elif m := re.match(r'--?(?:no)?config\.([^=]+)', arg):
            keys.append(m[1])
    if source is None or not keys:
        return None
    try:
        config = flags.FLAGS['config'].parser.parse(source)
    except Exception:  # the config file itself is broken: the original error says how
        return None
    return unknown_config_key(config, keys) if isinstance(config, ConfigDict) else None


def figure_formats() -> list[str]:
    """The file name endings matplotlib writes figures as: png, pdf, svg, ..."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_output(path: str, suffixes: Collection[str] | None = None, flag: str = '--out'
                 ) -> pathlib.Path:
    """The file `path` names, checked before any work: that it can be written.

    It must end in one of `suffixes` (without dots; None: any name) and not be a
    directory or a read-only file, in a directory that exists and is writable.
    """
    p = pathlib.Path(path).expanduser()
    where = f'cannot write {flag}={path}'
    if p.is_dir():
        raise CharLMError(f'{where}: it is a directory (name a file)')
    if suffixes is not None and p.suffix[1:].lower() not in suffixes:
        raise CharLMError(f'{where}: name a file ending in '
                          f'{", ".join("." + s for s in suffixes)}')
    if not p.parent.is_dir():
        raise CharLMError(f'{where}: ' + (f'{p.parent} is not a directory' if p.parent.exists()
                                          else f'no directory {p.parent}'))
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise CharLMError(f'{where}: {p.parent} is not writable')
    if p.exists() and not os.access(p, os.W_OK):
        raise CharLMError(f'{where}: the file is read-only')
    return p


def command(main=None, *, positional: bool = False, jax: bool = True):
    """Makes an absl main a charlm command: what every command does before and around it.

    Before: tunes glibc's malloc (`host_allocator`), keeps orbax's INFO lines off the
    console (`quiet_libraries`) and turns on JAX's compile cache (`compilation_cache`).
    Around: a CharLMError becomes `charlm: error: ...` and exit code 2; a run a signal
    stopped (errors.Stopped, its checkpoint saved) exits 0. Commands take
    flags only, unless `positional=True` (then main reads argv[1:]). `jax=False`: a command
    that never uses JAX does not import it (a second of start-up).
    """
    if main is None:
        return functools.partial(command, positional=positional, jax=jax)

    @functools.wraps(main)
    def wrapped(argv):
        host_allocator()
        quiet_libraries()
        if jax:
            compilation_cache()
        if len(argv) > 1 and not positional:
            fail(f'unexpected arguments: {" ".join(argv[1:])} (flags are written --name=value)')
        try:
            return main(argv)
        except CharLMError as e:
            logging.flush()
            fail(str(e))
        except Stopped:  # a signal ended training after its checkpoint (logged): exit 0
            logging.flush()
            return None
    return wrapped


class _LibraryFilter(logging.logging.Filter):
    """Keeps libraries' INFO chatter off the console: orbax's per-save lines, and JAX's
    "Unable to initialize backend 'tpu'" on every machine without one. Warnings still show."""

    def filter(self, record):
        if record.levelno >= logging.logging.WARNING:
            return True
        source, words = jax_private.BACKEND_LOG
        return 'orbax' not in record.pathname and not (
            record.pathname.endswith(source) and str(record.msg).startswith(words))


class _PlainFormatter(logging.logging.Formatter):
    """The message alone (warnings and errors named), for a person at a terminal."""

    def format(self, record):
        text = super().format(record)
        if record.levelno >= logging.logging.WARNING:
            return f'{record.levelname.lower()}: {text}'
        return text


LOG_FLAGS = ('logtostderr', 'alsologtostderr', 'log_dir')


def quiet_libraries() -> None:
    """Library filters, and on a terminal plain lines: the progress a person reads without
    absl's `I1203 06:15:18.476672 140481130650496 metric_writer.py:72]` prefix. Redirected
    output (a log file) and absl's own logging flags keep the prefix."""
    handler = logging.get_absl_handler()
    handler.addFilter(_LibraryFilter())
    asked = any(name in flags.FLAGS and flags.FLAGS[name].present for name in LOG_FLAGS)
    if sys.stderr.isatty() and not asked:
        handler.setFormatter(_PlainFormatter('%(message)s'))
