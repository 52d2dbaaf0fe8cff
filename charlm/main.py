"""Trains a recurrent language model; resumes if the workdir holds a checkpoint.

  python -m charlm.main --config=configs/shakespeare.py --workdir=runs/shakespeare \
      --config.model.hidden_size=512

On every host of a TPU pod or GPU cluster run the same command (with --multihost, or
the explicit --coordinator_address/--num_processes/--process_id); see launch/.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from charlm import cli, distributed, train

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only when run as a command: importing this module defines no flags."""
    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).', lock_config=True)
    flags.DEFINE_string('workdir', None, 'Checkpoints and TensorBoard events go here.')
    flags.DEFINE_bool('multihost', False, 'Join a multi-process job found by JAX (TPU pod, SLURM).')
    flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, for explicit set-up.')
    flags.DEFINE_integer('num_processes', None, 'Processes in the job (explicit set-up).')
    flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 (explicit set-up).')
    flags.DEFINE_integer('init_timeout', 120, 'Seconds to wait for the other processes.')
    flags.DEFINE_integer('heartbeat_timeout', 30, 'Seconds a process of a multi-process job may '
                         'stay silent before the others stop, naming it and the newest checkpoint.')
    flags.mark_flags_as_required(['config', 'workdir'])


@cli.command
def main(argv):
    distributed.initialize(FLAGS.multihost, FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id, FLAGS.init_timeout, FLAGS.heartbeat_timeout,
                           FLAGS.workdir)  # before any device is used
    logging.info('JAX %s: process %d of %d, %d local devices (%s), %d in all', jax.__version__,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.devices()[0].platform, jax.device_count())
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info('done: %s', result)


if __name__ == '__main__':
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
