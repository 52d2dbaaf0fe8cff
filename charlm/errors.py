"""The one exception type a user sees as a one-line message instead of a traceback."""


class CharLMError(ValueError):
    """Bad input from the user: a config, a corpus, a workdir, a prompt.

    Entry points catch it and print `charlm: error: <message>` with exit code 2;
    anything else is a bug and keeps its traceback.
    """
