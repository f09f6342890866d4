"""The project's typed errors. Each message says what went wrong, where, and what to do."""


class BnfoldError(Exception):
    """Base of every error bnfold raises for a cause outside its code (bad input, a missing package, a full disk):
    the command line turns each into a one-line message and exit code 2."""


class DataError(BnfoldError, ValueError):
    """The names data is missing, unreadable or malformed (the message names the file and line)."""


class FoldError(BnfoldError, ValueError):
    """A BatchNorm cannot be folded, or a model cannot be read as layers (the message names the layer and the fix)."""


class CertificateError(BnfoldError, ValueError):
    """A folded model's certificate does not hold (the message names the fold or module that fails it)."""


class BoundError(BnfoldError, ValueError):
    """error_bound has no error model for a layer or node of the model (the message names it and the way out)."""


class ModelError(BnfoldError, ValueError):
    """A model cannot be built as asked (an unknown architecture name, say)."""


class ExportError(BnfoldError, ValueError):
    """A folded model cannot be written as asked (a file type bnfold does not write, a model torch's exporter refuses),
    or its exported file does not compute it (the message names the file and the layer)."""


class MissingDependency(BnfoldError, ImportError):
    """An optional package is not installed (the message names the package and the extra that brings it)."""


class UnsupportedInput(BnfoldError, ValueError):
    """A fast path cannot take this input: a tensor of another shape, dtype or device than it was built or captured
    for (the message says what it takes)."""


class UnsupportedModel(BnfoldError, ValueError):
    """A fast path (FrozenChain, FusedMLP) cannot run this model or layer (the message names it and the fallback)."""


class CheckpointError(BnfoldError, ValueError):
    """A checkpoint is unreadable, unsafe or does not match its own architecture config."""


class TrainingError(BnfoldError, RuntimeError):
    """Training went wrong in a way its inputs caused (the loss or the parameters became nan or inf)."""


class WriteError(BnfoldError, OSError):
    """An output file could not be written (disk full, permission denied); the old file, if any, is untouched."""


def os_error_text(error: OSError) -> str:
    """'no such file or directory' for an OSError: its strerror in lower case, without '[Errno N]' or the path.

    Callers put the path in front themselves, so a message names it once.
    """
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:] if text else type(error).__name__
