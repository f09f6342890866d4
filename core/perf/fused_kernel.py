"""The Triton kernel behind `core.perf.fused.FusedMLP`: a folded Linear/activation net, one launch.

Imported only where Triton is installed. The kernel and its helpers are plain functions, wrapped
by `kernels(interpret)` either for the GPU (`triton.JITFunction`) or for Triton's CPU interpreter
(`InterpretedFunction`); helpers reach the kernel as constexpr arguments, never as globals, so
one source serves both. Each program loads every weight once, then loops over row blocks
(persistent): gather (or load) the inputs, then per layer one `tl.dot` onto a bias-initialised
fp32 accumulator and the activation, the activations never leaving the chip; one store of the
logits. `core/perf/fused.py` holds the numerics argument for every branch below.
"""

import functools
from typing import Any

import triton.language as tl
from triton.language.extra import libdevice

NONE, TANH, RELU, SIGMOID = 0, 1, 2, 3  # activation codes, one per Linear


def round_operand(x: tl.tensor, OPERAND: tl.constexpr) -> tl.tensor:
    """x rounded to the dot's operand format and back to fp32: the interpreter's stand-in for tensor cores.

    TF32 drops the 13 low mantissa bits (truncation: what tensor cores do with fp32 bits); bf16 goes
    through the interpreter's fp32 -> bf16 cast (also truncation). Products of such values are exact
    in fp32, so an "ieee" dot of them is a tensor-core dot up to the accumulation order.
    """
    if OPERAND == "tf32":
        x = (x.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
    elif OPERAND == "bf16":
        x = x.to(tl.bfloat16).to(tl.float32)
    return x


def load_weight(w_ptr: tl.tensor, K: tl.constexpr, N: tl.constexpr, OPERAND: tl.constexpr, EMULATE: tl.constexpr,
                ROUND: tl.constexpr) -> tl.tensor:
    """The packed (K, N) weight, row-major, as the dot's B operand (emulated: rounded, fp32)."""
    rk = tl.arange(0, K)
    rn = tl.arange(0, N)
    w = tl.load(w_ptr + rk[:, None] * N + rn[None, :])
    if EMULATE:
        w = ROUND(w.to(tl.float32), OPERAND)
    return w


def dense(h: tl.tensor, w: tl.tensor, b: tl.tensor, OPERAND: tl.constexpr, EMULATE: tl.constexpr,
          ROUND: tl.constexpr) -> tl.tensor:
    """b + h @ w with an fp32 accumulator that starts at the bias."""
    acc = tl.full((h.shape[0], w.shape[1]), 0.0, tl.float32) + b[None, :]
    if EMULATE:
        acc = tl.dot(ROUND(h, OPERAND), w, acc, input_precision="ieee")
    elif OPERAND == "bf16":
        acc = tl.dot(h.to(tl.bfloat16), w, acc)
    elif OPERAND == "tf32":
        acc = tl.dot(h, w, acc, input_precision="tf32")
    else:
        acc = tl.dot(h, w, acc, input_precision="ieee")
    return acc


def activate(y: tl.tensor, ACT: tl.constexpr, TANH_FN: tl.constexpr, SIGMOID_FN: tl.constexpr) -> tl.tensor:
    if ACT == 1:
        y = TANH_FN(y)
    elif ACT == 2:
        y = tl.where(y < 0, 0.0, y)
    elif ACT == 3:
        y = SIGMOID_FN(y)
    return y


def tanh_libdevice(x: tl.tensor) -> tl.tensor:
    """CUDA's tanhf (libdevice __nv_tanhf): at most 2 ulp from tanh (CUDA Math API)."""
    return libdevice.tanh(x)


def sigmoid_libdevice(x: tl.tensor) -> tl.tensor:
    """1 / (1 + expf(-x)): expf within 2 ulp (CUDA Math API), then one IEEE addition and one IEEE division."""
    one = tl.full(x.shape, 1.0, tl.float32)
    return tl.math.div_rn(one, one + libdevice.exp(-x))


def tanh_f64(x: tl.tensor) -> tl.tensor:
    """tanh evaluated in float64 and rounded once to fp32 (within 1 ulp): the interpreter has no libdevice.

    |x| < 2^-12: tanh x = x(1 − x²/3 + ...) is x within 2^-26 relative. Otherwise sign(x)(1 − e)/(1 + e),
    e = exp(−2|x|), whose float64 error (a few 2^-53 over 1 − e ≥ 2^-11.5) is below 2^-38 relative.
    """
    z = x.to(tl.float64)
    a = tl.abs(z)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(z < 0, -t, t)
    return tl.where(a < 2.0**-12, z, t).to(tl.float32)


def sigmoid_f64(x: tl.tensor) -> tl.tensor:
    """1 / (1 + exp(−x)) in float64, rounded once to fp32: the interpreter's stand-in for sigmoid_libdevice.

    x is clamped at −700 (exp(700) is finite): below it σ(x) < 2⁻¹⁰⁰⁰ rounds to 0 in fp32 either way.
    """
    z = tl.maximum(x.to(tl.float64), -700.0)
    return (1.0 / (1.0 + tl.exp(-z))).to(tl.float32)


def fused_mlp(x_ptr: tl.tensor, out_ptr: tl.tensor, n_rows: tl.tensor, stride_x: tl.tensor, stride_xk: tl.tensor,
              stride_out: tl.tensor, t_ptr: tl.tensor,
              w1_ptr: tl.tensor, b1_ptr: tl.tensor, w2_ptr: tl.tensor, b2_ptr: tl.tensor,
              w3_ptr: tl.tensor, b3_ptr: tl.tensor, w4_ptr: tl.tensor, b4_ptr: tl.tensor,
              INPUT: tl.constexpr, IN: tl.constexpr, CTX: tl.constexpr, VOCAB: tl.constexpr,
              D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr, D4: tl.constexpr,
              OUT: tl.constexpr, LAYERS: tl.constexpr,
              A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr, A4: tl.constexpr,
              OPERAND: tl.constexpr, EMULATE: tl.constexpr, BLOCK_M: tl.constexpr,
              LOAD_W: tl.constexpr, DENSE: tl.constexpr, ACTIVATE: tl.constexpr, ROUND: tl.constexpr,
              TANH_FN: tl.constexpr, SIGMOID_FN: tl.constexpr) -> None:
    """logits[r] = net(x[r]) for rows r < n_rows; persistent over row blocks of BLOCK_M.

    INPUT "float": x is fp32 (n_rows, IN), layer 1 a dot with the (D0, D1) weight.
    INPUT "gather": x is int (n_rows, CTX) character ids, t_ptr the (VOCAB, IN / CTX) embedding C;
    the row C[x_0] ... C[x_{CTX-1}] (IN wide, padded to D0) goes into layer 1's dot.
    INPUT "table": x as for "gather", t_ptr the (CTX, VOCAB, D1) tables T_p = C·W1[p], so layer 1
    is b1 + T_0[x_0] + ... + T_{CTX-1}[x_{CTX-1}] (no dot).
    An id outside [0, VOCAB) gives a NaN row. D_k are the padded widths (powers of two ≥ 16), OUT
    the true output width. Every weight is loaded once per program, before the row loop.
    """
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    if INPUT != "table":
        w1 = LOAD_W(w1_ptr, D0, D1, OPERAND, EMULATE, ROUND)
    if LAYERS >= 2:
        w2 = LOAD_W(w2_ptr, D1, D2, OPERAND, EMULATE, ROUND)
    if LAYERS >= 3:
        w3 = LOAD_W(w3_ptr, D2, D3, OPERAND, EMULATE, ROUND)
    if LAYERS >= 4:
        w4 = LOAD_W(w4_ptr, D3, D4, OPERAND, EMULATE, ROUND)
    for start in range(pid * BLOCK_M, n_rows, programs * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M).to(tl.int64)
        live = rows < n_rows
        b1 = tl.load(b1_ptr + tl.arange(0, D1))
        if INPUT == "table":
            rn1 = tl.arange(0, D1)
            h = tl.full((BLOCK_M, D1), 0.0, tl.float32) + b1[None, :]
            for p in tl.static_range(CTX):
                idx = tl.load(x_ptr + rows * stride_x + p * stride_xk, mask=live, other=0).to(tl.int64)
                ok = (idx >= 0) & (idx < VOCAB)
                entry = (p * VOCAB + idx) * D1
                h += tl.load(t_ptr + entry[:, None] + rn1[None, :], mask=ok[:, None], other=float("nan"))
        else:
            rk = tl.arange(0, D0)
            used = live[:, None] & (rk < IN)[None, :]
            if INPUT == "gather":
                E: tl.constexpr = IN // CTX
                idx = tl.load(x_ptr + rows[:, None] * stride_x + (rk // E)[None, :] * stride_xk, mask=used,
                              other=0).to(tl.int64)
                ok = (idx >= 0) & (idx < VOCAB)
                # The NaN of an id out of range is the load's `other`, not a select after the load: Triton 3.6
                # moves such a select into the dot operand's layout, its boolean mask through shared memory,
                # which it cannot lower (docs/fused.md, "Triton releases").
                x = tl.load(t_ptr + idx * E + (rk % E)[None, :], mask=used & ok,
                            other=tl.where(used, float("nan"), 0.0))
            else:
                x = tl.load(x_ptr + rows[:, None] * stride_x + rk[None, :] * stride_xk, mask=used, other=0.0)
            h = DENSE(x, w1, b1, OPERAND, EMULATE, ROUND)
        h = ACTIVATE(h, A1, TANH_FN, SIGMOID_FN)
        if LAYERS >= 2:
            b2 = tl.load(b2_ptr + tl.arange(0, D2))
            h = ACTIVATE(DENSE(h, w2, b2, OPERAND, EMULATE, ROUND), A2, TANH_FN, SIGMOID_FN)
        if LAYERS >= 3:
            b3 = tl.load(b3_ptr + tl.arange(0, D3))
            h = ACTIVATE(DENSE(h, w3, b3, OPERAND, EMULATE, ROUND), A3, TANH_FN, SIGMOID_FN)
        if LAYERS >= 4:
            b4 = tl.load(b4_ptr + tl.arange(0, D4))
            h = ACTIVATE(DENSE(h, w4, b4, OPERAND, EMULATE, ROUND), A4, TANH_FN, SIGMOID_FN)
        rn = tl.arange(0, h.shape[1])
        tl.store(out_ptr + rows[:, None] * stride_out + rn[None, :], h, mask=live[:, None] & (rn < OUT)[None, :])


@functools.cache
def kernels(interpret: bool) -> dict[str, Any]:
    """The kernel and its constexpr helpers, wrapped for the GPU compiler or for the CPU interpreter."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as wrap
    else:
        from triton.runtime.jit import JITFunction as wrap
    return {
        "kernel": wrap(fused_mlp),
        "LOAD_W": wrap(load_weight), "DENSE": wrap(dense), "ACTIVATE": wrap(activate), "ROUND": wrap(round_operand),
        "TANH_FN": wrap(tanh_f64 if interpret else tanh_libdevice),
        "SIGMOID_FN": wrap(sigmoid_f64 if interpret else sigmoid_libdevice),
    }
