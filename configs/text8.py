"""text8: 10^8 characters of Wikipedia text, lower-case a-z and space (27 symbols),
split 90M / 5M / 5M by count, as its papers do.

  # Neither shipped nor downloaded: get http://mattmahoney.net/dc/text8.zip and unzip it
  # (one file, `text8`, 100,000,000 characters on a single line).
  python -m charlm.prepare --config=configs/text8.py --config.data.path=/data/text8
  python -m charlm.main --config=configs/text8.py --workdir=runs/text8 \
      --config.data.path=/data/text8
  python -m charlm.evaluate --workdir=runs/text8 --split=test

For a GPU: the enwik8 model's shape (configs/enwik8.py, after AWD-LSTM) on characters.
Published LSTM-family results on text8's test split are about 1.3 bits per character
(e.g. 1.29 for the hierarchical multiscale LSTM of Chung et al. 2017); the file has no
line breaks, so samples are one long line.
"""

from configs import enwik8


def get_config():
    c = enwik8.get_config()
    c.data.path = 'text8'  # the unzipped file: --config.data.path=/path/to/text8
    c.data.tokenizer = 'char'  # 27 characters: a-z and the space
    c.sample.prompts = ('the ', 'anarchism ')
    return c
