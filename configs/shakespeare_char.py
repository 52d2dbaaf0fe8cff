"""Character-level 2 x 512 LSTM on tiny-shakespeare (nanoGPT's shakespeare_char split).

  python -m charlm.main --config=configs/shakespeare_char.py --workdir=runs/shakespeare_char \
      --config.data.path=/path/to/tinyshakespeare.txt
  python -m charlm.evaluate --workdir=runs/shakespeare_char --window=256   # nanoGPT's context
  python -m charlm.evaluate --workdir=runs/shakespeare_char --dynamic      # + stateful, dynamic

Measured (2026-12-07/08, seeds 0, 1 and 2, each run pinned to one core of a 2-core CPU, on
the 1,115,394-char tinyshakespeare.txt, first 90% train / last 10% val, the split of
nanoGPT's shakespeare_char, whose 6 x 384 transformer reaches 1.4697 with a context of up to
256 characters): mean ± sample std (ddof=1) of each seed's best checkpoint on the val split
  1.4110 ± 0.0035 nats/char in training's own windows of 100 (seeds 0, 1, 2: 1.4086 at step
         14,000, 1.4095 at 14,000, 1.4150 at 13,000);
  1.3849 ± 0.0033 in windows of 256 (1.3821, 1.3840, 1.3885);
  1.3697 ± 0.0035 read as one stream (1.3670, 1.3685, 1.3737);
  1.2052 ± 0.0023 with dynamic evaluation (1.2077, 1.2031, 1.2048): Krause et al.'s rule,
         segments of 20, lr and decay chosen for each seed on Hamlet over lr 3e-5, 4e-5,
         6e-5 and decay 0.001, 0.003 (picks 4e-5, 6e-5, 6e-5, each with 0.001; for seed 2
         lr 8e-5, 1e-4 and 1.5e-4 read Hamlet worse: 1.2424, 1.2758, 3.2395; adding decay
         0 and 0.0003 moves seeds 0 and 1 to 0.0003, which scores 1.2071 ± 0.0021).
The seeds issue asks for 1.40 / 1.38 / 1.20: the mean misses them by 0.011, 0.005 and 0.005.
All three seeds in one command (`charlm.compare --seeds`; the mean ± std in compare.md;
hamlet.txt is written by docs/evaluation.md's command):
  python -m charlm.compare --config=configs/shakespeare_char.py --cells=lstm --seeds=0,1,2 \
      --out=runs/recipe --window=256 --dynamic --dynamic_rule=rms-global \
      --dynamic_seq_len=20 --dynamic_tune_file=hamlet.txt --dynamic_tune_lrs=3e-5,4e-5,6e-5 \
      --dynamic_tune_decays=0.001,0.003 --config.data.path=/path/to/tinyshakespeare.txt
Batch 16 with weight decay on the kernels only is the change of 2026-12-08 (docs/results.md,
"The seeds issue's levers", has every curve): against the batch-32 recipe's runs of the same
seeds at equal characters it trails through the high-lr middle of the cosine and leads in
its last quarter, for -0.0002, -0.0156 and -0.0095 in windows of 100 (-0.0085 on the mean,
with a third of the spread). On two threads a step of 16 x 100 runs at 0.84-0.92x the
chars/s of 32 x 100 (`charlm.bench`, paired: 6,551 / 7,777 and 6,971 / 7,574), so a seed
takes about 30 min where batch 32 took 26. At batch 16 a peak lr of 3.5e-3 (5e-3 over the
square root of 2; seed 1) led through the middle by up to 0.015 and ended 0.0044 behind
(1.4139 / 1.3884). Kernels-only decay at batch 32 (seed 2) was level at 20.8M characters.

The batch-32 recipe (until 2026-12-08: `--config.batch_size=32 --config.num_train_steps=7200
--config.warmup_steps=400 --config.weight_decay_on=all`), one run, seed 0, 2026-12-04: the
best checkpoint is step 7000. On the val split it scores
  1.4088 nats/char in training's own windows of 100, each from a zero state: every
         prediction has 0-99 characters of context, less than nanoGPT's;
  1.3815 in windows of 256 (`charlm.evaluate --window=256`): the context nanoGPT's 1.4697
         is measured with, so this is the like-for-like comparison;
  1.3673 read as one stream, the carry passed on (`--dynamic --dynamic_lr=0`);
  1.2114 with dynamic evaluation, Krause et al.'s rule (`--dynamic_rule=rms-global
         --dynamic_seq_len=20`), its lr (4e-5) and decay (0.001) chosen together on
         another text (`--dynamic_tune_file`: Hamlet's first 50k characters, absent from
         tiny-shakespeare; the command is in docs/evaluation.md) over lr 2e-5, 3e-5, 4e-5,
         6e-5 and decay 0, 0.001, 0.003, 0.01 (the batch-64 grid, lr 1e-5 to 3e-5, picks
         its edge, 3e-5 and 0.001: 1.2148).
The windowed-100 curve at 500-step evals: 1.6771, 1.5414, 1.5206, 1.4883, 1.4660, 1.4578,
1.4506, 1.4337, 1.4305, 1.4264, 1.4217, 1.4194, 1.4142, 1.4088 (step 7000), 1.4108 (7200).
Train loss logged at the end: 1.17 (dropout on). This meets the targets of the recurrent-LM
issue (1.42 / 1.40 / 1.25) with 0.011 and 0.018 to spare in the first two.
A second seed (`seed=1`) scores 1.4251 / 1.4003 (best at step 7200; 1.4326 / 1.4076 at
batch 64): seed 1 runs 0.008-0.019 higher than seed 0 at every setting measured, and misses
both targets, by 0.005 and 0.0003. Seed 0's timed rerun (below) meets them again.
A third seed (`seed=2`, 2026-12-07) scores 1.4245 / 1.3991 (best at step 7000). Mean ± sample
std over seeds 0, 1, 2: 1.4195 ± 0.0092 in windows of 100, 1.3936 ± 0.0105 in windows of 256.

Batch 32 is what changed on the evening of 2026-12-04. On this CPU a step of 32 x 100 runs
at the same chars/s as one of 64 x 100 (`charlm.bench`, paired: 15,834 and 15,626 against
15,185 and 16,132), so the same 23.0M characters, and the same time, buy twice the updates.
Until then this config was batch 64 for 3,600 steps (warmup 200, evals every 250), which
scored 1.4240 / 1.3996 / 1.3855 / 1.2303 (best at step 3600; curve 1.7521, 1.5683, 1.5182,
1.4798, 1.4718, 1.4693, 1.4489, 1.4429, 1.4391, 1.4354, 1.4305, 1.4306, 1.4261, 1.4284,
1.4240; train loss 1.18). At equal characters the batch-32 run leads it at every eval from its
step 4,000 (batch 64's step 2,000) on, by 0.009-0.020. Batch 32 at a peak lr of 3.5e-3 (5e-3
over the square root of 2) scored 1.4174 / 1.3917 (best at step 7000): lr 5e-3 is better
at batch 32 too. Everything below was measured at batch 64.

Dropout and peak lr, each AdamW 0.1 and seed 0: at lr 4e-3, dropout 0.45 scored 1.4315 /
1.4066, 0.4 (this config until the evening of 2026-12-04) 1.4286 / 1.4038 /
1.3896 / 1.2363 (curve 1.8073, 1.5946, 1.5335, 1.4947, 1.4759, 1.4667, 1.4555, 1.4471,
1.4415, 1.4362, 1.4350, 1.4355, 1.4286, 1.4294, 1.4304; seed 1 1.4397 / 1.4152) and 0.35
1.4247 / 1.4001 / 1.3859 / 1.2351 (best at 3250). At dropout 0.4, lr 5e-3 scored 1.4269 /
1.4019 (best at 3600). Both changes together (this config) gain under 0.001 over dropout
0.35 alone, inside one seed's noise; lr 5e-3 with dropout 0.3 trailed this config by 0.005
at step 2250 (stopped there). Adam's beta2 of 0.99 (`adam_b2`) tied 0.999 at lr 4e-3 and
dropout 0.4 (1.4370 against 1.4362 at step 2500; stopped there), and three layers of 400
(3.34M parameters, the same count) trailed by 0.024 at step 2500.

Peak lr, each AdamW 0.1 and seed 0: 2e-3 scored 1.4437 / 1.4199 / 1.4059 / 1.2601 (best
step 3500; seed 1: 1.4524 / 1.4285); 3e-3 scored 1.4326 / 1.4083 / 1.3941 / 1.2450 (best
step 3250; curve 1.8688, 1.6249, 1.5561, 1.5073, 1.4878, 1.4770, 1.4604, 1.4544, 1.4469,
1.4412, 1.4372, 1.4383, 1.4326, 1.4342, 1.4333); 4e-3 leads 3e-3 by 0.010 at
step 1500 and by 0.004 at the end (both at dropout 0.4). At lr 4e-3 and dropout 0.4,
weight_drop 0.25 scored 1.4313 / 1.4081 (best at step 3250, behind at every eval). At
3e-3, a cosine to 0 instead of 0.1x (`end_lr_fraction=0.0`) scored 1.4328 / 1.4091, no gain.

AdamW's decoupled weight decay (0.1, on every parameter, scaled by the schedule's lr) is
what changed on 2026-12-04: with Adam and everything else equal this config scored 1.4501 /
1.4267 / 1.4132 / 1.2659 (seed 1: 1.4556 / 1.4323). Decay 0.3 scored 1.4446 / 1.4199 and
1.0 underfit (1.5831 at step 1500 against 1.4930; stopped there); these at lr 2e-3.
Training on windows of 256 (batch 25 x 256, the same characters a step) did not pay:
1.4529 / 1.4264.

Time: this config, rerun with the machine to itself (2026-12-04, `charlm.bench` of it at
15,059 chars/s), took 26 min 20 s of wall time for the whole process (compiles and the 15
evals included), median 14,970 chars/s logged, peak RSS 2.1 GB. That rerun ran on two
threads where the figures above come from a run pinned to one core beside another (about
9k chars/s, 44 min); the float rounding differs, and over 7,200 steps the two runs drift
apart like two seeds: the rerun scored 1.4164 / 1.3894 (best at its last step; curve
1.6772, 1.5455, 1.5236, 1.4935, 1.4757, 1.4626, 1.4583, 1.4461, 1.4360, 1.4268, 1.4251,
1.4241, 1.4184, 1.4179, 1.4164), still under 1.42 and 1.40; dynamic, at lr 4e-5 and decay
0.001 as above, 1.2119.

At batch 64 for 3,600 steps, dropout 0.4 and lr 4e-3 (the same computation as at dropout
0.35 and lr 5e-3: the dropout rate only moves a threshold and the lr scales the update), a
rerun with the machine to itself (2026-12-04, `charlm.bench` of it at 14,641 chars/s) took
27 min 24 s of wall time for the whole process, median 14,524 chars/s logged, peak RSS
2.2 GB; that rerun gave 1.4289 / 1.4040, within 0.0003 of its pinned run.
The Adam config took 25 min 30 s of wall time for the whole process (compiles and the 15
evals included), median 15,516 chars/s logged, peak RSS 2.5 GB, on 2026-12-04 with
`charlm.bench` of this config at 14,493-17,859 chars/s. On 2026-12-02 (bench 12,279) the
same config with a 2,800-step horizon took 23 min 19 s, so 3,600 steps come to about 30 min
on that day. The AdamW runs above ran two at a time, each pinned to one core (median 8-9k
chars/s, 43-50 min).

The horizon was 2,800 until 2026-12-04; at 2,800 steps with Adam this config scored 1.4588 /
1.4353 / 1.4220 / 1.2894 (seed 1: 1.4681 / 1.4453), and the ablation below ran at that
horizon, with Adam and dropout 0.4.

Ablation (2026-12-02, at the 2,800-step horizon, seed 0 unless named, one change each;
`charlm.compare`, command in docs/results.md): best windowed-100 val nats/char (its step)
  this config (dropout 0.4 + weight_drop 0.1)     1.4588 (2750)
  dropout_rate=0 (weight_drop only)              1.4747 (2250; overfits, train 1.12)  +0.0159
  weight_drop=0 (dropout only)                   1.4616 (2500)                        +0.0028
  variational_dropout=True (locked masks)        1.4605 (2750)                        +0.0017
  embed_dropout=0.1 (adds row dropout)           1.4871 (2750; underfits, train 1.51) +0.0283
  this config again with seed=1                  1.4681 (2800; window 256: 1.4453)    +0.0093
Dropout between the layers is what matters; weight_drop and per-element (not locked) masks
each win by under 0.003, inside the 0.009 a second seed moves the recipe itself; embed_dropout
costs 0.028 on a 65-character vocabulary (a dropped row removes one letter from every
sequence of the batch), so it stays 0.
Earlier, dropout 0.25 without weight_drop at horizon 3500 overfit after step 2000 (best 1.4741).
"""

from configs import shakespeare


def get_config():
    c = shakespeare.get_config()  # every field not set here is the default charlm run's

    c.data.seq_len = 100  # BPTT and eval window; a 200 x batch-32 probe logged 7.1k chars/s
    # against 10.1k for 100 x 64, but under heavier load, so that is not a clean comparison
    c.model.num_layers = 2  # two stacked LSTM layers (default)
    c.model.hidden_size = 512  # 3.3M parameters; 10-11k chars/s quiet (2 x 256: ~22k,
    # docs/results.md)
    c.model.embed_dim = 64  # default embedding width; layer 0 folds it into a [V, 4H] table
    c.model.dropout_rate = 0.35  # between the layers and before the head (at lr 4e-3, 0.4:
    # 1.4286 / 1.4038, 0.45: 1.4315 / 1.4066; 0.25 overfit at lr 2e-3 with Adam)
    c.model.weight_drop = 0.1  # DropConnect on W_h, one mask per step (AWD-LSTM)

    c.batch_size = 16  # 1,600 chars per step: twice the updates of 32 for the same chars
    # (32 x 7,200 steps: 1.4195 / 1.3936 over seeds 0-2; 64 x 3,600, seed 0: 1.4240 / 1.3996)
    c.num_train_steps = 14400  # the cosine horizon, 23.0M chars (64 x 2,800 steps scored 0.009
    # worse than 64 x 3,600 for seeds 0 and 1)
    c.optimizer = 'adamw'  # Adam with decoupled weight decay: 0.006 better than Adam here
    c.weight_decay = 0.1  # per step, lr_t x 0.1 x each kernel (0.3: no better; 1.0 underfits)
    c.weight_decay_on = 'kernels'  # the weight matrices; not biases or the embedding (level
    # with 'all' at batch 32, seed 2: docs/results.md, the seeds issue's levers)
    c.learning_rate = 5e-3  # peak after warmup (4e-3: 1.4247 / 1.4001 at dropout 0.35;
    # at dropout 0.4, 5e-3: 1.4269 / 1.4019, 4e-3: 1.4286 / 1.4038, 3e-3: 1.4326 / 1.4083)
    c.warmup_steps = 800  # linear warmup from 0, the same 1.28M chars as 200 at batch 64
    c.end_lr_fraction = 0.1  # cosine decays to 5e-4 at the last step (default fraction)
    c.grad_clip_norm = 1.0  # global-norm clip (default); no instability seen at 5e-3

    c.eval_every_steps = 1000  # full val pass (111,538 chars) costs 4-7 s on 2 cores
    c.eval_batch_size = 256  # windows per eval batch; the loss does not depend on it
    c.checkpoint_every_steps = 2000  # latest saves; the best eval is saved apart anyway
    c.early_stopping_patience = 2  # stop after two evals without a new best
    c.sample.length = 0  # no samples at evals (saves time); use charlm.sample afterwards
    return c
