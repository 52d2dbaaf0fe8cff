"""A seconds-long smoke run of the default config, used by the tests.

  python -m charlm.main --config=configs/tiny.py --workdir=/tmp/tiny
"""

from configs import shakespeare


def get_config():
    c = shakespeare.get_config()
    c.data.seq_len = 16
    c.model.embed_dim = 8
    c.model.hidden_size = 16
    c.model.dropout_rate = 0.0
    c.batch_size = 8
    c.num_train_steps = 20
    c.warmup_steps = 2
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.eval_batch_size = 64
    c.checkpoint_every_steps = 10
    c.sample.length = 20
    return c
