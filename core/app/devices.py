"""--device: a device this machine has, checked before any data is read or any step taken."""

from core.app.errors import UsageError


def check_device(text: str) -> str:
    """`text` if it names a device this machine has (cpu, cuda, cuda:N, mps), else a UsageError saying why."""
    if text == "cpu":
        return text
    if not text.strip():
        raise UsageError(f"--device: the device name is empty; use cpu, cuda, cuda:N or mps (got {text!r})")
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {text}: not a device name; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {text}: Apple MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"--device {text}: bnfold runs on cpu, cuda or mps")
    return text
