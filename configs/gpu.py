"""A character LSTM sized for one GPU (an H100/H200 class card), e.g. on tiny-shakespeare:

  python -m charlm.main --config=configs/gpu.py --workdir=runs/gpu \
      --config.data.path=/path/to/tinyshakespeare.txt

3 x 1024, 21.6M parameters (vocabulary 65), 32,768 characters a step.
benchmarks/gpu_check.py trains its first steps on a GPU and compares the losses with the
same steps on a CPU, so it stays float32 and model.impl='hoisted', which run everywhere;
--config.model.dtype=bfloat16 or --config.model.impl=cudnn are the GPU speed-ups
(benchmarks/README.md, GPU).
"""

from configs import shakespeare


def get_config():
    c = shakespeare.get_config()
    c.data.seq_len = 256  # longer BPTT: each step's time loop is latency-bound on a GPU

    m = c.model
    m.embed_dim = 128  # as bench configurations A and B
    m.num_layers = 3  # 3 x 1024: what the base config suggests for a GPU run
    m.hidden_size = 1024  # [128, 1024] x [1024, 4096] recurrent products: a GPU's size
    m.dropout_rate = 0.3  # 21.6M parameters on 1M characters overfit without it
    m.impl = 'hoisted'  # runs on a CPU too, so the CPU reference runs the same code
    m.dtype = 'float32'  # bfloat16 is faster, but leaves no tight tolerance against a CPU

    c.batch_size = 128  # 128 x 256 = 32,768 chars a step: about 30 steps an epoch
    c.num_train_steps = 3000  # about 100 passes over tiny-shakespeare's 1M training chars
    c.learning_rate = 2e-3  # a little below the base's 3e-3 for the wider model
    c.warmup_steps = 100  # about 3 epochs
    c.log_every_steps = 25  # the console line and the only host sync, every 25 steps
    c.eval_every_steps = 250  # a validation pass over the last 111k chars
    c.eval_batch_size = 512  # windows per eval batch: the GPU has the memory
    c.checkpoint_every_steps = 250  # with each evaluation
    c.early_stopping_patience = 4  # stop after 1,000 steps without a better validation loss
    return c
