"""Four fake CPU devices and strict broadcasting for every test.

XLA_FLAGS must be set before jax is imported anywhere, hence here and not in a fixture.
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')

SHAKESPEARE_LIKE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.
"""


@pytest.fixture
def corpus_file(tmp_path):
    """A small corpus file (about 10k characters) the tests write themselves."""
    path = tmp_path / 'corpus.txt'
    path.write_text(SHAKESPEARE_LIKE * 40, encoding='utf-8')
    return str(path)


@pytest.fixture
def tiny_config(corpus_file, tmp_path):
    """configs/tiny.py on the small corpus, with the built-in cache kept in tmp."""
    from configs import tiny

    config = tiny.get_config()
    config.data.path = corpus_file
    config.data.cache_dir = str(tmp_path / 'cache')
    return config
