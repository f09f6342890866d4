"""The fused kernel against the eager and compiled baselines on a GPU: `python -m core.perf.gpu_check`.

One interleaved run per batch size (each round in a fresh order; medians: core.perf.timing.interleaved_medians) of
the folded E02 net. At B = 2^21 rows: the eager chain with W stored (in, out) and (out, in), torch.nn with
fuse_linear_bn_eval, torch.compile default and max-autotune, the fused kernel in fp32, tf32 and bf16 (and fp32 with
32-row blocks and 4 warps, the runner-up configuration); at B = 4096 the eager paths and the fused kernels; at B = 1
the same, then the fused kernels and the eager chain captured into CUDA graphs. Every output is checked on
CHECK_ROWS rows against its certified bound (core.perf.fused.fused_error_bound); the tables show times, the targets
(TARGETS_S, FP32_VERSUS_EAGER) and the worst err/bound. A variant that fails to build, compile or run is reported
in its table with the error, and the others go on. Exit status 1 when a certified check fails or a variant failed;
a missed time target is reported, not failed. It finishes in a few minutes (torch.compile max-autotune's tuning is
most of it).

--dry-run: tiny sizes on the CPU through Triton's interpreter (no torch.compile unless --compile,
no CUDA graphs): the CPU-side logic. --compile-only: compile every fused kernel the check launches by default
for sm_90a without a GPU and report registers, spills and shared memory (run it in a process where
TRITON_INTERPRET is unset); exit status 1 when one fails to compile or spills beyond KNOWN_SPILLS.
"""

import argparse
import copy
import functools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import cast

import torch

from core.engine.fold import fold
from core.makemore.data import random_rows
from core.makemore.experiments import trained_e02
from core.makemore.layers import Linear
from core.makemore.model import CharMLP
from core.makemore.torchnn import to_torch_nn
from core.perf.cells import scaled
from core.perf.chain import Forward, linear_terms, minimal_chain
from core.perf.timing import call_with, interleaved_medians

Log = Callable[[str], None]

LARGE_ROWS = 2**21
MID_ROWS = 4096
CHECK_ROWS = 4096  # rows are independent: a bound checked on these certifies these outputs of the large batch
TRAIN_ROWS, TRAIN_STEPS = 20_000, 200  # random rows and SGD steps that give the BatchNorms realistic statistics
ROUNDS, SAMPLE_S = 21, 0.01
EAGER_PATHS = ("eager chain W (in,out)", "eager chain W (out,in)", "torch.nn + fuse_linear_bn_eval")
TARGETS_S = {  # on an H100/H200 (design targets; reported, never failed); a fused one counts only when certified
    (LARGE_ROWS, "fused fp32"): 1.5e-3, (LARGE_ROWS, "fused tf32"): 0.6e-3, (LARGE_ROWS, "fused bf16"): 0.4e-3,
    (1, "captured fused fp32"): 8e-6, (1, "captured fused tf32"): 8e-6, (1, "captured fused bf16"): 8e-6,
}
STRETCH = {(LARGE_ROWS, "fused fp32")}  # targets beyond the goal: fp32's goal is FP32_VERSUS_EAGER
# At every batch size fused fp32 is no slower than the best eager fp32 path (of the same kind: direct calls, or
# calls replayed from CUDA graphs): fused variant -> the eager variants it is held to.
FP32_VERSUS_EAGER = {"fused fp32": EAGER_PATHS, "captured fused fp32": ("captured eager chain",)}
ALTERNATIVE = "fused fp32 (32 rows, 4 warps)"  # fewer shared-memory bytes per FMA, a few registers spilled
UNCERTIFIED = {"torch.nn + fuse_linear_bn_eval": "torch folds in float32: outside this certificate"}
# Spills ptxas reports for a default kernel, inspected in the SASS (nvdisasm): (Triton major.minor, precision, rows)
# -> bytes. Triton 3.6's tf32 kernel for large batches stores one loop-invariant register before the row loop and
# reloads it once per 128-row block. Any other spill fails --compile-only.
KNOWN_SPILLS = {("3.6", "tf32", LARGE_ROWS): 4}


def transposed_chain(folded: CharMLP) -> Forward:
    """The eager minimal chain with each W stored (out, in), contiguous, as torch.nn.Linear holds it."""
    C = folded.C.detach()
    linears = [(W.T.contiguous(), b) for W, b in (linear_terms(layer) for layer in folded.layers
                                                  if isinstance(layer, Linear))]
    last = len(linears) - 1

    def chain(X: torch.Tensor) -> torch.Tensor:
        x = torch.embedding(C, X).view(X.shape[0], -1)
        for i, (Wt, b) in enumerate(linears):
            x = torch.addmm(b, x, Wt.T)
            if i < last:
                x.tanh_()
        return x

    return chain


def eager_precision() -> str:
    """The fused precision whose rounding model covers an eager float32 matmul here."""
    if torch.get_float32_matmul_precision() == "medium":
        return "bf16"
    if torch.get_float32_matmul_precision() == "high" or torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def build(dry_run: bool) -> tuple[CharMLP, CharMLP]:
    """(unfolded, folded) E02 in eval mode, float32 on the CPU, trained briefly on random rows."""
    g = torch.Generator().manual_seed(0)
    rows, steps = (300, 10) if dry_run else (TRAIN_ROWS, TRAIN_STEPS)
    X, Y = random_rows(rows, g)
    model = trained_e02(X, Y, steps, g)
    return model, cast(CharMLP, fold(model)[0].eval())  # fold returns a net of its input's type


Factories = dict[str, Callable[[], Forward]]


def variants(model_d: CharMLP, folded_d: CharMLP, compile_: bool, large: bool) -> Factories:
    """name -> a factory of callable(X): the eager paths and the fused kernels, and at the large batch torch.compile
    (when `compile_`) and the runner-up fused configuration. Factories, so that one that fails is one failed row."""
    from core.perf.fused import PRECISIONS, FusedMLP, compiled_variants

    cases: Factories = {"eager chain W (in,out)": lambda: minimal_chain(folded_d),
                        "eager chain W (out,in)": lambda: transposed_chain(folded_d),
                        "torch.nn + fuse_linear_bn_eval": lambda: to_torch_nn(model_d, fuse=True)}
    if large and compile_:
        cases.update({name: already(fn) for name, fn in compiled_variants(folded_d).items()})
    cases.update({f"fused {p}": functools.partial(FusedMLP, folded_d, p) for p in PRECISIONS})
    if large:
        cases[ALTERNATIVE] = functools.partial(FusedMLP, folded_d, "fp32", block_m=32, num_warps=4)
    return cases


def already(fn: Forward) -> Callable[[], Forward]:
    """The factory of a callable built already (torch.compile builds at its first call)."""
    return lambda: fn


def captured_variants(folded_d: CharMLP, X1: torch.Tensor) -> Factories:
    """The B = 1 cases replayed from CUDA graphs: the fused kernels (each called once before its capture, so that
    Triton compiles outside the capture) and the eager chain."""
    from core.perf.chain import capture
    from core.perf.fused import PRECISIONS, FusedMLP

    def captured(p: str) -> Forward:
        fused = FusedMLP(folded_d, p)
        fused(X1)
        return capture(fused, X1)

    cases: Factories = {f"captured fused {p}": functools.partial(captured, p) for p in PRECISIONS}
    cases["captured eager chain"] = functools.partial(capture, folded_d, X1)
    return cases


def precision_of(name: str) -> str:
    """The precision whose bound certifies variant `name`: a fused kernel's own, else the eager matmuls' here."""
    from core.perf.fused import PRECISIONS

    if name == ALTERNATIVE:
        return "fp32"
    last = name.split()[-1]
    return last if "fused" in name.split() and last in PRECISIONS else eager_precision()


def built(factories: Factories, X: torch.Tensor, failures: dict[str, str]) -> dict[str, Forward]:
    """name -> callable for each factory that builds and runs once on X (compiling what it compiles); a failure is
    recorded in `failures` as name -> 'Type: first line' and that variant is left out."""
    cases = {}
    for name, make in factories.items():
        try:
            fn = make()
            with torch.no_grad():
                fn(X)
        except Exception as error:  # a failing variant is reported in the table; the others go on
            failures[name] = failure_text(error)
            continue
        cases[name] = fn
    return cases


def failure_text(error: BaseException) -> str:
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "no message")
    return f"{type(error).__name__}: {first}"


def check(model: CharMLP, X: torch.Tensor, outputs: dict[str, torch.Tensor],
          precision: dict[str, str]) -> dict[str, tuple[float, bool | None]]:
    """name -> (max err/bound, certified?) of each output on X's rows against the unfolded model on the CPU."""
    from core.perf.fused import fused_error_bound

    Xc = X.cpu()
    with torch.no_grad():
        expected = model(Xc).double()
    bounds = {p: fused_error_bound(model, Xc, p) for p in set(precision.values())}
    result = {}
    for name, out in outputs.items():
        bound = bounds[precision[name]]
        err = (out.double().cpu() - expected).abs()
        worst = (err / bound.clamp_min(torch.finfo(torch.float64).tiny)).max().item()
        result[name] = (worst, None if name in UNCERTIFIED else bool((err <= bound).all()))
    return result


def measure(cases: dict[str, Forward], X: torch.Tensor, device: torch.device, rounds: int,
            sample_s: float) -> dict[str, float]:
    """name -> median seconds of a call on X, the cases timed interleaved under inference mode."""
    calls = {name: call_with(fn, X) for name, fn in cases.items()}
    with torch.inference_mode():
        return interleaved_medians(calls, device, rounds, sample_s)


def outputs_of(cases: dict[str, Forward], X: torch.Tensor, rows: int) -> dict[str, torch.Tensor]:
    """name -> the first `rows` rows of its output on X, copied."""
    with torch.inference_mode():
        return {name: fn(X)[:rows].clone() for name, fn in cases.items()}


def best_eager_fp32(medians: dict[str, float], precision: dict[str, str],
                    among: tuple[str, ...]) -> tuple[str, float] | None:
    """(name, median) of the fastest of `among` that was timed and runs fp32 matmuls, or None."""
    timed = [(medians[name], name) for name in among if name in medians and precision[name] == "fp32"]
    return (min(timed)[1], min(timed)[0]) if timed else None


def target_mark(rows: int, name: str, t: float, certified: bool | None) -> str:
    """'<= 0.6 ms', 'MISSED 0.6 ms' or '' for variant `name` at `rows` rows; a fused time counts only certified."""
    target = TARGETS_S.get((rows, name))
    if target is None:
        return ""
    met = t <= target and certified is not False
    return f"{'' if met else 'MISSED '}{'stretch ' if (rows, name) in STRETCH else '<= '}{format_time(target)}"


def format_rows(rows: int, medians: dict[str, float], checks: dict[str, tuple[float, bool | None]],
                precision: dict[str, str], failures: dict[str, str] | None = None) -> list[str]:
    """The table of one batch size: time, throughput, speed against the best eager fp32 path, target, err/bound,
    certified; then a row per failed variant and the fp32-versus-eager targets."""
    failures = failures or {}
    best = best_eager_fp32(medians, precision, EAGER_PATHS)
    head = (f"  {'variant':<32}{'time':>11}{'rows/s':>11}{'vs best eager':>15}{'target':>17}"
            f"{'precision':>11}{'err/bound':>11}  certified")
    lines = [f"B = {rows}", head]
    for name, t in medians.items():
        worst, ok = checks[name]
        speed = f"{best[1] / t:.2f}x" if best else "-"
        status = UNCERTIFIED.get(name, "yes" if ok else "NO: outside the bound")
        lines.append(f"  {name:<32}{format_time(t):>11}{rows / t:>11.3g}{speed:>15}"
                     f"{target_mark(rows, name, t, ok):>17}{precision[name]:>11}{worst:>11.2e}  {status}")
    for name, why in failures.items():
        lines.append(f"  {name:<32}  FAILED: {why}")
    for fused, among in FP32_VERSUS_EAGER.items():
        if fused not in medians:
            continue
        reference = best_eager_fp32(medians, precision, among)
        if reference is None:
            lines.append(f"  {fused} vs the best eager fp32 path: no eager fp32 path timed "
                         f"(eager matmuls run {eager_precision()} here)")
            continue
        ratio = medians[fused] / reference[1]
        lines.append(f"  {fused} vs the best eager fp32 path ({reference[0]}): {ratio:.2f}x its time "
                     f"(target <= 1{'' if ratio <= 1 else ': MISSED'})")
    return lines


def format_time(seconds: float) -> str:
    value, unit = scaled(seconds)
    return f"{value:.3g} {unit}"


def compile_only(log: Log = print) -> int:
    """Compile every fused kernel the check launches by default for sm_90a and report ptxas's registers, spills and
    shared memory; a kernel that fails to compile is reported and the others go on. 1 when one failed or spilled
    beyond KNOWN_SPILLS, 2 when this Triton is not supported."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        log("--compile-only needs a process without TRITON_INTERPRET (Triton builds interpreter helpers at import)")
        return 2
    from core.errors import BnfoldError
    from core.perf.fused import PRECISIONS, FusedMLP, compile_for_gpu, triton_release, triton_support

    reason = triton_support()
    if reason is not None:
        log(reason)
        return 2
    import triton

    _, folded = build(True)
    ptxas = triton.knobs.nvidia.ptxas.path
    log(f"compiling for sm_90a with triton {triton.__version__}, torch {torch.__version__}")
    failed = False
    for p in PRECISIONS:
        for rows in (1, LARGE_ROWS):
            config = FusedMLP.described(folded, p).config(rows)
            try:
                kernel = compile_for_gpu(folded, p, rows)
            except BnfoldError as error:
                failed = True
                log(f"{p} B={rows}: {config}: FAILED: {error}")
                continue
            info = _ptxas_info(ptxas, kernel.asm["ptx"])
            known = KNOWN_SPILLS.get((triton_release(), p, rows), 0)
            failed |= info["spill"] > known
            note = f" (known: {known} bytes, one register stored before the row loop)" if known else ""
            log(f"{p} B={rows}: {config}: {info['registers']} registers, "
                f"{info['spill']} bytes spilled{note}, {kernel.metadata.shared} bytes shared memory")
    return 1 if failed else 0


def _ptxas_info(ptxas: str, ptx: str) -> dict[str, int]:
    """ptxas's registers and spill-store bytes for the kernel in `ptx`, compiled for sm_90a."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")],
                              capture_output=True, text=True, check=True)
    return {"registers": _ptxas_number(r"Used (\d+) registers", done.stderr),
            "spill": _ptxas_number(r"(\d+) bytes spill stores", done.stderr)}


def _ptxas_number(pattern: str, report: str) -> int:
    match = re.search(pattern, report)
    if match is None:
        raise RuntimeError(f"ptxas -v printed no line matching {pattern!r}; its report:\n{report}")
    return int(match.group(1))


def main(argv: list[str] | None = None, log: Log = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.perf.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU through Triton's interpreter")
    parser.add_argument("--compile", action="store_true", help="with --dry-run: also run torch.compile on the CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (saves its tuning time)")
    parser.add_argument("--compile-only", action="store_true", help="compile the fused kernels for sm_90a; no GPU")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    if args.compile_only:
        return compile_only(log)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        log("gpu_check needs a CUDA device; --dry-run runs its logic on the CPU, --compile-only compiles the kernels")
        return 2
    from core.perf.fused import availability

    reason = availability()
    if reason is not None:
        log(reason)
        return 2
    start = time.perf_counter()
    device = torch.device("cpu" if args.dry_run else "cuda")
    cuda = device.type == "cuda"
    large, mid, check_rows = (128, 32, 128) if args.dry_run else (LARGE_ROWS, MID_ROWS, CHECK_ROWS)
    rounds, sample_s = (args.rounds or 3, 0.0) if args.dry_run else (args.rounds or ROUNDS, SAMPLE_S)
    model, folded = build(args.dry_run)
    model_d, folded_d = copy.deepcopy(model).to(device), copy.deepcopy(folded).to(device)
    g = torch.Generator().manual_seed(1)
    X = random_rows(large, g)[0].to(device)
    name = torch.cuda.get_device_name(device) if cuda else "CPU (Triton interpreter)"
    import triton

    log(f"gpu_check: {name}, torch {torch.__version__}, triton {triton.__version__}; folded E02; "
        f"{rounds} rounds, medians of interleaved samples; bounds checked on {check_rows} rows")
    failed = False
    failures: dict[str, str] = {}
    compile_ = (args.compile or not args.dry_run) and not args.no_compile
    for rows in (large, mid, 1):
        Xb = X[:rows].clone()
        factories = variants(model_d, folded_d, compile_, rows == large)
        if rows == 1 and cuda:
            factories.update(captured_variants(folded_d, Xb))
        log(f"B = {rows}: building, warming up and timing {len(factories)} variants "
            f"({time.perf_counter() - start:.0f} s so far)")
        failed_here: dict[str, str] = {}
        cases = built(factories, Xb, failed_here)
        precision = {name: precision_of(name) for name in cases}
        medians = measure(cases, Xb, device, rounds, sample_s)
        checks = check(model, Xb[:check_rows], outputs_of(cases, Xb, check_rows), precision)
        failed |= any(ok is False for _, ok in checks.values())
        failures.update({f"{name} (B = {rows})": why for name, why in failed_here.items()})
        for line in format_rows(rows, medians, checks, precision, failed_here):
            log(line)
    verdict = "a certified bound FAILED" if failed else "all bounds hold"
    if failures:
        verdict += f"; {len(failures)} variant{'s' if len(failures) > 1 else ''} FAILED: {', '.join(failures)}"
    log(f"done in {time.perf_counter() - start:.0f} s; {verdict}")
    return 1 if failed or failures else 0


if __name__ == "__main__":
    sys.exit(main())
