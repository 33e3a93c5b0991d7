"""User-facing error type: the CLI prints its message on one line and exits non-zero."""


class FlashTalkError(ValueError):
    """Bad input or configuration, with a message that names what was wrong."""
