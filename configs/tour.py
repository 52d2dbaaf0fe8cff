"""The notebook tour's run (notebooks/tour.ipynb): the default run, small enough to train in
about a minute on a 2-core CPU, on the built-in corpus (no download).

  python -m charlm.main --config=configs/tour.py --workdir=runs/tour

It learns words and line breaks, not Shakespeare: val loss ~2.0 nats/char after its 200
steps. To go bigger, change a few fields: `--config=configs/shakespeare.py` (2 x 256,
3000 steps, ~15 min on a CPU) or `configs/shakespeare_char.py` (2 x 512, the recipe
that beats nanoGPT's transformer on tiny-shakespeare).
"""

from configs import shakespeare


def get_config():
    c = shakespeare.get_config()  # every field not set here is the default run's
    c.data.seq_len = 64  # BPTT window (default 100)
    c.model.hidden_size = 128  # 2 x 128 LSTM: ~0.2M parameters (default 2 x 256)
    c.model.embed_dim = 32
    c.batch_size = 32  # 2,048 characters a step
    c.num_train_steps = 200
    c.warmup_steps = 30
    c.learning_rate = 5e-3  # a small model takes a larger step
    c.log_every_steps = 50
    c.eval_every_steps = 50
    c.eval_max_tokens = 20_000  # each eval scores 20k evenly spread val characters
    c.checkpoint_every_steps = 200
    c.sample.length = 0  # the notebook samples itself
    return c
