"""charlm: character- and word-level recurrent language models in JAX/Flax.

  import charlm
  run = charlm.load('runs/shakespeare')          # the best checkpoint; step=N for another
  run.sample('ROMEO:', length=200, temperature=0.8)
  run.score(open('sonnets.txt').read())['bits_per_char']
  run.gates('To be, or not to be')['forget']     # float32[T, H], layer 0
  run.model, run.params, run.tokenizer, run.config, run.step

Importing charlm imports nothing else (no JAX, no flags): `load` does, when called.
Training from Python: `charlm.train.train_and_evaluate(config, workdir)`.
"""

from __future__ import annotations

import typing

if typing.TYPE_CHECKING:
    from charlm.runs import Run


def load(workdir: str, step: int | None = None) -> Run:
    """A trained run of `workdir`: its best checkpoint (else the latest), or step `step`
    (of checkpoints/, else best/), as `--step` means in every command. Only its JSON is
    read here; the parameters are read at first use (`run.params`)."""
    from charlm import runs
    return runs.find(workdir, step)
