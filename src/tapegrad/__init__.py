"""tapegrad: reverse-mode automatic differentiation on a recorded, replayable tape.

Public API: `Variable`, the op functions (`add`, `mul`, `sum`, ...), `record`, `no_record`,
`grad`, `value_and_grad`, `Tape`, `replay`, and the error family rooted at `TapegradError`.
"""

from . import replay
from .errors import DTypeError, GuardError, LimitError, TapeFormatError, TapegradError, TruncatedTapeError
from .functional import grad, hessian, value_and_grad
from .tape import Record, Tape
from .tape_format import Limits, Recovery, TapeRecoveryWarning, dumps, loads, save
from .tape_format import load_path as load
from .tracer import (
    Variable,
    abs,
    add,
    astype,
    broadcast_to,
    clip,
    concatenate,
    cos,
    div,
    equal,
    exp,
    getitem,
    greater,
    greater_equal,
    guard,
    less,
    less_equal,
    log,
    log_softmax,
    logsumexp,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mul,
    neg,
    no_record,
    not_equal,
    pow,
    record,
    relu,
    reshape,
    scatter_add,
    sigmoid,
    sign,
    sin,
    softmax,
    sqrt,
    stack,
    sub,
    sum,
    sum_to,
    tan,
    tanh,
    transpose,
    where,
)

__version__ = "0.1.0"

__all__ = [
    "Limits", "Recovery", "TapeRecoveryWarning", "dumps", "load", "loads", "save",
    "DTypeError", "GuardError", "LimitError", "Record", "Tape", "TapeFormatError", "TapegradError",
    "TruncatedTapeError", "Variable", "abs", "add", "astype", "broadcast_to", "clip",
    "concatenate", "cos", "div", "equal", "exp", "getitem", "grad", "greater", "greater_equal", "guard", "hessian",
    "less", "less_equal", "log", "log_softmax", "logsumexp", "matmul", "max", "maximum", "mean",
    "min", "minimum", "mul", "neg", "no_record", "not_equal", "pow", "record", "relu", "replay",
    "reshape", "scatter_add", "sigmoid", "sign", "sin", "softmax", "sqrt", "stack", "sub", "sum",
    "sum_to", "tan", "tanh", "transpose", "value_and_grad", "where",
]
