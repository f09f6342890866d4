"""Checkpoints of a CharMLP: written atomically, loaded with weights_only=True, and validated against their own
architecture config before any tensor is trusted (a CheckpointError names the file and what is wrong)."""

import errno
import io
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass

import torch

from core.atomic import atomic_write_bytes
from core.errors import CheckpointError, os_error_text
from core.limits import MAX_SEED
from core.makemore.data import Split, open_once
from core.makemore.layers import ACTIVATIONS, layer_from_spec
from core.makemore.model import VOCAB_SIZE, CharMLP

CHECKPOINT_FORMAT = "bnfold.charmlp/2"  # /2 records the split; /1 checkpoints load with the default split
LEGACY_FORMATS = ("bnfold.charmlp/1",)


def save(model: CharMLP, path, split: Split | None = None, names_sha256: str | None = None) -> None:
    """Write config, split record and state_dict atomically: a crash leaves the old file or none, never half of one.

    `split` (and the sha256 of the names file it cut) is what evaluation needs to use the same train/dev/test
    names the model was trained on; None records that nobody knows (evaluation then uses the default split).
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config(),
        "training": model.training,
        "split": None if split is None else {"seed": split.seed, "fractions": list(split.fractions)},
        "names_sha256": names_sha256,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model, and the split its training used (the default split when none is recorded)."""

    model: CharMLP
    split: Split
    split_recorded: bool  # False for checkpoints written before splits were recorded, or saved without one
    names_sha256: str | None  # of the names file the split was cut from, when recorded


class _Invalid(Exception):
    """One inconsistency found while validating a checkpoint payload (load_checkpoint adds the path and the fix)."""


def _describe(value, limit: int = 60) -> str:
    """A value from a checkpoint for an error message: one line, at most `limit` characters (a tensor by shape)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {_shape(value)}"
    text = " ".join(repr(value).split())  # a tensor inside a list prints on several lines
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_field(where: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise _Invalid(f"{where} is {_describe(value)}; expected an integer {bounds}")
    return value


def _bool_field(where: str, value) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"{where} is {_describe(value)}; expected true or false")
    return value


def _entry(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise _Invalid(f"{where} has no {key!r} entry")
    return mapping[key]


def _shape(t) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def _spec_values(spec: dict) -> int | None:
    """How many stored numbers a layer spec implies (None for a layer kind this check does not know)."""
    kind = spec.get("type")
    if kind == "linear":
        return spec["fan_in"] * spec["fan_out"] + (spec["fan_out"] if spec["bias"] else 0)
    if kind == "batchnorm":
        return spec["dim"] * (4 if spec["affine"] else 2)
    if kind in ACTIVATIONS:
        return 0
    return None


def _check_layer_spec(i: int, spec, width: int | None) -> int | None:
    """Validate layer i's spec against the width of its input; returns the width of its output (None: unknown)."""
    where = f"layer {i}"
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise _Invalid(f"{where} is {_describe(spec)}; expected a dict with a 'type'")
    kind = spec["type"]
    where = f"layer {i} ({kind})"  # only linear and batchnorm name it below
    if kind == "linear":
        fan_in = _int_field(f"{where} fan_in", _entry(spec, "fan_in", where))
        fan_out = _int_field(f"{where} fan_out", _entry(spec, "fan_out", where))
        _bool_field(f"{where} bias", _entry(spec, "bias", where))
        if width is not None and fan_in != width:
            raise _Invalid(f"{where} takes fan_in {fan_in} but its input has {width} features")
        return fan_out
    if kind == "batchnorm":
        dim = _int_field(f"{where} dim", _entry(spec, "dim", where))
        eps, momentum = _entry(spec, "eps", where), _entry(spec, "momentum", where)
        if not _is_number(eps) or eps <= 0:
            raise _Invalid(f"{where} has eps {_describe(eps)}; eps must be a positive finite number such as 1e-05")
        if not _is_number(momentum) or not 0 <= momentum <= 1:
            raise _Invalid(f"{where} has momentum {_describe(momentum)}; momentum must be a number from 0 to 1")
        _bool_field(f"{where} affine", _entry(spec, "affine", where))
        if width is not None and dim != width:
            raise _Invalid(f"{where} normalises {dim} features but its input has {width}")
        return dim
    if kind in ACTIVATIONS:
        return width
    return None  # a kind this check does not know: layer_from_spec refuses it


def _check_config(config) -> dict:
    if not isinstance(config, dict):
        raise _Invalid(f"the config is {type(config).__name__}; expected a dict")
    vocab = _int_field("vocab_size", _entry(config, "vocab_size", "the config"))
    if vocab != VOCAB_SIZE:
        raise _Invalid(f"vocab_size is {vocab}, but bnfold's vocabulary has {VOCAB_SIZE} characters ('.' and a-z)")
    emb = _int_field("emb_size", _entry(config, "emb_size", "the config"))
    context = _int_field("context_length", _entry(config, "context_length", "the config"))
    scheme = config.get("init_scheme")
    if scheme is not None and not isinstance(scheme, str):
        raise _Invalid(f"init_scheme is {_describe(scheme)}; expected a string or none")
    layers = _entry(config, "layers", "the config")
    if not isinstance(layers, list) or not layers:
        raise _Invalid(f"layers is {_describe(layers)}; expected a non-empty list of layer specs")
    width: int | None = context * emb
    for i, spec in enumerate(layers):
        width = _check_layer_spec(i, spec, width)
    if width is not None and width != vocab:
        raise _Invalid(f"the last layer gives {width} features but vocab_size is {vocab}: the net must end in "
                       f"one logit per character")
    return config


def _check_split(record) -> Split:
    if not isinstance(record, dict):
        raise _Invalid(f"the split record is {_describe(record)}; expected a dict with 'seed' and 'fractions'")
    seed = _int_field("the split seed", _entry(record, "seed", "the split record"), minimum=0, maximum=MAX_SEED)
    fractions = _entry(record, "fractions", "the split record")
    if (not isinstance(fractions, (list, tuple)) or len(fractions) != 3 or not all(map(_is_number, fractions))
            or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9):
        raise _Invalid(f"the split fractions are {_describe(fractions)}; expected three positive numbers summing to 1")
    first, second, third = (float(f) for f in fractions)
    return Split(seed, (first, second, third))


def _check_tensors(config: dict, state) -> torch.dtype:
    """Check the stored tensors against the config before anything is allocated from the config's numbers."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _Invalid("the state_dict is not a dict of named tensors")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise _Invalid(f"state_dict entry {_describe(key)} is {type(value).__name__}; expected a dense tensor")
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise _Invalid(f"tensor {_describe(key)} of shape {_shape(value)} is a view of only "
                           f"{value.untyped_storage().nbytes()} stored bytes; expected a tensor of its own")
    C = _entry(state, "C", "the state_dict")
    if not C.dtype.is_floating_point:
        raise _Invalid(f"tensor C is {C.dtype}; expected a floating-point dtype")
    expected = (config["vocab_size"], config["emb_size"])
    if tuple(C.shape) != expected:
        raise _Invalid(f"tensor C has shape {_shape(C)} but vocab_size {expected[0]} and emb_size {expected[1]} "
                       f"imply ({expected[0]}, {expected[1]})")
    for i, spec in enumerate(config["layers"]):
        implied = _spec_values(spec)
        stored = sum(t.numel() for k, t in state.items() if k.startswith(f"layers.{i}."))
        if implied is not None and implied != stored:
            raise _Invalid(f"layer {i} ({spec['type']}) is described with {implied} values but the file stores "
                           f"{stored} for it")
    return C.dtype


def _build(config: dict, state: dict, dtype: torch.dtype) -> CharMLP:
    try:
        layers = [layer_from_spec(spec, dtype=dtype) for spec in config["layers"]]
    except (KeyError, TypeError, ValueError) as e:
        raise _Invalid(f"a layer spec cannot be built ({e})") from e
    model = CharMLP(torch.zeros(config["vocab_size"], config["emb_size"], dtype=dtype), layers,
                    config["context_length"], config.get("init_scheme"))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise _Invalid(f"the stored tensors lack {', '.join(missing)}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise _Invalid(f"the file stores tensors the config has no place for: {', '.join(unexpected)}")
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape:
            raise _Invalid(f"tensor {key} has shape {_shape(got)} but the config implies {_shape(want)}")
        if got.dtype != want.dtype:
            raise _Invalid(f"tensor {key} is {got.dtype} but C is {dtype}; every tensor must share one dtype")
    model.load_state_dict(state)
    for name, buffer in model.named_buffers():
        if name.endswith("running_var") and bool((buffer < 0).any()):
            raise _Invalid(f"tensor {name} has negative entries; a variance is never negative")
    return model


def _unpickling_failure(error: Exception) -> str:
    """Why torch.load refused, without torch's advice to load with weights_only=False."""
    text = str(error)
    if isinstance(error, EOFError) or not text.strip():
        return "the file is empty or ends early" if isinstance(error, EOFError) else type(error).__name__
    if "PytorchStreamReader" in text:
        detail = text.split("zip archive:", 1)[-1].split(". ", 1)[0].strip().rstrip(".")
        return f"the file is truncated or corrupted ({detail})"
    kept = []
    for line in text.splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(("Weights only load failed", "Please file an issue", "Check the documentation",
                                         "In PyTorch 2.6")) and "weights_only" not in line:
            kept.append(line.rstrip("."))
    return "; ".join(kept) or type(error).__name__


MAX_CHECKPOINT_BYTES = 2**30  # bnfold's checkpoints are well under a megabyte


def _read_payload(path):
    """The checkpoint's payload, from one open of `path`: the file whose type and size are checked is the one torch
    reads (never a second open that could find another file), and a FIFO is refused without waiting for a writer."""
    if not os.fspath(path):
        raise CheckpointError("the checkpoint path is empty; give a checkpoint file such as model.pt")
    try:
        fd, info = open_once(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: no such checkpoint; check the path or create one with `bnfold train`") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({os_error_text(e)})") from e
    try:
        if stat.S_ISDIR(info.st_mode):
            raise CheckpointError(f"{path}: is a directory, not a checkpoint; give the .pt file inside it")
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path}: is not a regular file (a device, pipe or socket); give a checkpoint file")
        if info.st_size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: {info.st_size} bytes is far larger than any bnfold checkpoint; "
                                  f"check the path")
        with os.fdopen(os.dup(fd), "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on stderr
            return torch.load(fh, map_location="cpu", weights_only=True)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise CheckpointError(f"{path}: cannot read the checkpoint ({os_error_text(e)})") from e
        raise _unreadable(path, "the file is truncated or corrupted") from e  # torch's zip reader, cut short
    except CheckpointError:
        raise
    except Exception as e:  # the unpickler raises many kinds on damaged or hostile bytes
        raise _unreadable(path, _unpickling_failure(e)) from e
    finally:
        os.close(fd)


def _unreadable(path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable bnfold checkpoint (refused to load: {reason}); re-create it with "
                           f"`bnfold train`")


def load_checkpoint(path) -> Checkpoint:
    """Read and validate a checkpoint, unpickling with weights_only=True: no code ever runs.

    Every inconsistency between the config, the split record and the tensors (a missing entry, a
    vocabulary other than 27, a context length that does not fit the first layer, a non-positive
    eps, a wrong shape or dtype) is a CheckpointError naming the file and what is wrong.
    Non-finite values are not checked here: see `nonfinite_tensors`.
    """
    payload = _read_payload(path)
    fix = "the file is damaged or was not written by this bnfold: re-create it with `bnfold train`"
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str):
        raise CheckpointError(f"{path}: not a bnfold checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    fmt = payload["format"]
    if fmt not in (CHECKPOINT_FORMAT, *LEGACY_FORMATS):
        newer = fmt.startswith("bnfold.")
        raise CheckpointError(f"{path}: not a bnfold checkpoint (format {_describe(fmt)}, "
                              f"expected {CHECKPOINT_FORMAT!r})"
                              + ("; it was written by another bnfold version" if newer else ""))
    try:
        config = _check_config(_entry(payload, "config", "the checkpoint"))
        state = _entry(payload, "state_dict", "the checkpoint")
        record = payload.get("split") if fmt == CHECKPOINT_FORMAT else None
        split = Split() if record is None else _check_split(record)
        names_sha256 = payload.get("names_sha256") if fmt == CHECKPOINT_FORMAT else None
        if names_sha256 is not None and not (isinstance(names_sha256, str) and re.fullmatch(r"[0-9a-f]{64}",
                                                                                            names_sha256)):
            raise _Invalid(f"names_sha256 is {_describe(names_sha256)}; expected 64 hex digits or none")
        training = _bool_field("the training flag", payload.get("training", False))
        dtype = _check_tensors(config, state)
        model = _build(config, state, dtype)
    except _Invalid as e:
        raise CheckpointError(f"{path}: {e}; {fix}") from None
    model.train(training)
    return Checkpoint(model, split, record is not None, names_sha256)


def load(path, map_location="cpu") -> CharMLP:
    """The model of a checkpoint (see load_checkpoint), moved to map_location."""
    return load_checkpoint(path).model.to(map_location)
