"""enwik8 as its papers model it: bytes as tokens, 90M / 5M / 5M by count, stateful BPTT.

  # enwik8 is the first 10^8 bytes of an English Wikipedia XML dump (the Hutter Prize
  # file); it is neither shipped nor downloaded: get http://mattmahoney.net/dc/enwik8.zip
  # and unzip it (one file, `enwik8`, 100,000,000 bytes).
  python -m charlm.prepare --config=configs/enwik8.py --config.data.path=/data/enwik8
  python -m charlm.main --config=configs/enwik8.py --workdir=runs/enwik8 \
      --config.data.path=/data/enwik8
  python -m charlm.evaluate --workdir=runs/enwik8 --split=test   # bits/byte of the test split

The anchor is AWD-LSTM's enwik8 model (Merity et al. 2018, "An Analysis of Neural Language
Modeling at Multiple Scales"): a 3-layer LSTM, 400-wide embedding, 1840 hidden units, tied
embedding and head (so the last layer is 400 wide), dropout 0.4 on the output, 0.1 between
layers and on the input, weight drop 0.2 on the recurrent weights, Adam at 1e-3, batch 128
x 200 bytes, 50 epochs: **1.232 test bits per byte** (bpc in the paper). This config is
that model and schedule as charlm's fields can say it (one dropout rate between layers and
before the head; a cosine instead of the paper's two 10x steps at epochs 25 and 35); it
is for a GPU: ~47M parameters, 25,600 bytes a step, 3,516 steps an epoch.

The vocabulary is the byte values the file holds (205 in enwik8; data.byte_vocab='all'
gives 256). Each in-training evaluation scores 1M of the 5M validation bytes in evenly
spread windows (eval_max_tokens); charlm.evaluate scores whole splits.
"""

from configs import shakespeare


def get_config():
    c = shakespeare.get_config()
    d = c.data
    d.path = 'enwik8'  # the unzipped file: --config.data.path=/path/to/enwik8
    d.tokenizer = 'byte'  # bytes, not UTF-8 characters: any byte sequence is a token stream
    d.byte_vocab = 'seen'  # the 205 byte values enwik8 holds, as AWD-LSTM's prep script
    d.val_size = 5_000_000  # the standard split by count: train 90M, val 5M, test 5M
    d.test_size = 5_000_000
    d.seq_len = 200  # AWD-LSTM's bptt
    d.stateful = True  # the carry passed from window to window, as AWD-LSTM trains

    m = c.model
    m.embed_dim = 400
    m.num_layers = 3
    m.hidden_sizes = (1840, 1840, 400)  # the last layer as wide as the tied embedding
    m.tie_embeddings = True
    m.dropout_rate = 0.4  # AWD-LSTM: 0.4 on the output (0.1 between layers)
    m.weight_drop = 0.2  # DropConnect on the recurrent weights
    m.dtype = 'bfloat16'  # a GPU's speed; the carry stays float32

    c.batch_size = 128
    c.num_train_steps = 175_000  # 50 epochs of 90M bytes at 25,600 bytes a step
    c.optimizer = 'adamw'
    c.learning_rate = 1e-3
    c.weight_decay = 1.2e-6  # AWD-LSTM's wdecay (as an L2 term there, decoupled here)
    c.warmup_steps = 1000
    c.end_lr_fraction = 0.01  # the paper ends at 1e-5 after two 10x steps
    c.grad_clip_norm = 0.25  # AWD-LSTM's clip
    c.log_every_steps = 100
    c.eval_every_steps = 3500  # about once an epoch
    c.eval_max_tokens = 1_000_000  # of the 5M validation bytes, evenly spread, every eval
    c.eval_batch_size = 512
    c.checkpoint_every_steps = 3500
    c.sample.prompts = ('<page>\n    <title>', "'''")
    return c
