"""The project's typed errors. Each message says what went wrong, where, and what to do."""


class BnfoldError(Exception):
    """Base of every error the command line turns into a one-line message and exit code 2."""


class DataError(BnfoldError, ValueError):
    """The names data is missing, unreadable or malformed (the message names the file and line)."""


class FoldError(BnfoldError, ValueError):
    """A BatchNorm cannot be folded (the message names the layer index and the fix)."""


class CheckpointError(BnfoldError, ValueError):
    """A checkpoint is unreadable, unsafe or does not match its own architecture config."""


class UsageError(BnfoldError, ValueError):
    """A command-line option cannot be honoured here (an unwritable --out, --device cuda without CUDA)."""
