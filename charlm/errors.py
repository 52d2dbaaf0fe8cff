"""CharLMError, the one exception a user sees as a one-line message instead of a traceback;
Stopped, the end of a run a signal asked for."""


class CharLMError(ValueError):
    """Bad input from the user: a config, a corpus, a workdir, a prompt.

    Entry points catch it and print `charlm: error: <message>` with exit code 2;
    anything else is a bug and keeps its traceback.
    """


class Stopped(Exception):
    """Training stopped by a signal (SIGTERM, Ctrl-C) after its checkpoint was saved.

    It ends the caller too, as the signal meant: a command exits 0 (the message was
    logged), and a loop over runs (charlm.compare, a sweep in a notebook) does not go on
    to the next run. `result` is what train_and_evaluate would have returned. A stop the
    caller asked for (`stop_at`) or early stopping returns normally instead.
    """

    def __init__(self, reason: str, result: dict | None = None):
        super().__init__(reason)
        self.result = result or {}
