"""Word-level LSTM on Shakespeare: next word instead of next character.

  python -m charlm.main --config=configs/shakespeare_words.py --workdir=runs/words

The built-in corpus has 1.27M word tokens (words, punctuation marks, newlines) and
30,614 distinct words; the 10,000 most frequent cover 97.3% of the tokens, the rest
read as <unk>. Loss and perplexity are per word token; val/bits_per_char divides the
same total loss by the characters of the validation text, so it compares directly with
a character model's bits/char (it is optimistic by what <unk> hides).

Any UTF-8 file works the same way (its vocabulary is built from the file):
  --config.data.path=/path/to/nietzsche.txt --config.data.lowercase=True

Tied input and output embeddings (--config.model.tie_embeddings=True, which needs
--config.model.embed_dim=256 here) save 2.56M parameters; at 1,500 steps they scored 4.7476
nats/word against 4.7138 untied at embed_dim 256 (docs/results.md): off until a longer run says.
The seed's Nietzsche model (Embedding 100 -> LSTM 150 -> LSTM 100 -> softmax) is
  --config.model.embed_dim=100 --config.model.hidden_sizes='(150, 100)'
"""

from configs import shakespeare


def get_config():
    c = shakespeare.get_config()
    d = c.data
    d.tokenizer = 'word'
    d.lowercase = False  # keep case: speaker names and sentence starts are capitalised
    d.max_vocab = 10_000  # 97.3% of the built-in corpus's tokens; the rest are <unk>
    d.min_count = 2  # a word seen once is as good as unknown; on a small file this matters
    d.seq_len = 35  # words per window (about 150 characters, as the char model's 100 chars)

    m = c.model
    m.embed_dim = 128  # word embeddings carry more than the 64 a character needs
    m.num_layers = 2
    m.hidden_size = 256
    m.hidden_sizes = ()  # e.g. (150, 100) for the seed's tapering stack
    m.dropout_rate = 0.3  # a word model meets each word far less often: it overfits sooner

    c.batch_size = 64
    c.learning_rate = 2e-3
    c.num_train_steps = 5000  # about 10 passes over the 1.14M training tokens
    c.sample.length = 60  # words per sample
    return c
