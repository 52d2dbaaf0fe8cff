"""What every charlm command line shares: one-line errors and device set-up."""

from __future__ import annotations

import functools
import sys

from absl import flags, logging

from charlm.errors import CharLMError


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
    except (KeyError, AttributeError, OSError, ValueError, TypeError, SyntaxError) as e:
        fail(_one_line(e))
    return rest


def one_line_errors(main=None, *, positional: bool = False):
    """Runs an absl main; a CharLMError becomes `charlm: error: ...` and exit code 2.

    Commands take flags only, unless `positional=True` (then main reads argv[1:]).
    """
    if main is None:
        return functools.partial(one_line_errors, positional=positional)

    @functools.wraps(main)
    def wrapped(argv):
        host_allocator()
        quiet_libraries()
        compilation_cache()
        if len(argv) > 1 and not positional:
            fail(f'unexpected arguments: {" ".join(argv[1:])} (flags are written --name=value)')
        try:
            return main(argv)
        except CharLMError as e:
            logging.flush()
            fail(str(e))
    return wrapped


class _LibraryFilter(logging.logging.Filter):
    """Keeps orbax's per-save INFO chatter off the console; warnings still show."""

    def filter(self, record):
        return record.levelno >= logging.logging.WARNING or 'orbax' not in record.pathname


def quiet_libraries() -> None:
    logging.get_absl_handler().addFilter(_LibraryFilter())
