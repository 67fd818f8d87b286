"""tapegrad: reverse-mode automatic differentiation on a recorded, replayable tape.

Public API: `Variable`, the op functions (`add`, `mul`, `sum`, ...: one for every registry row
marked `public`, installed from `tracer.FUNCTIONS`), `record`, `no_record`, `grad`,
`value_and_grad`, `hessian`, `Tape`, `replay`, the file functions, custom ops (`defop`,
`Function`), and the error family rooted
at `TapegradError` (`NonFiniteError` is what anomaly mode, `check_finite=True`, raises).
"""

from .interrupts import held

# A Ctrl-C while tapegrad (and numpy, msgpack) import is held until they are done: importlib frees
# a lock per module through a weakref callback, and Python drops an exception raised in one, so an
# interrupt landing there would be lost and the program would run on.
with held():
    from typing import TYPE_CHECKING

    from . import replay
    from .custom import Function, defop
    from .errors import (
        ArgumentError,
        CopyError,
        DTypeError,
        GuardError,
        LimitError,
        NonFiniteError,
        TapeFormatError,
        TapegradError,
        TruncatedTapeError,
        UnsupportedError,
    )
    from .functional import grad, hessian, value_and_grad
    from .tape import Record, Tape
    from .tape_format import Limits, Recovery, TapeRecoveryWarning, dumps, loads, save
    from .tape_format import load_path as load
    from .tracer import FUNCTIONS, Variable, no_record, record

globals().update(FUNCTIONS)

if TYPE_CHECKING:
    from .tracer import OpFunction

    def __getattr__(name: str) -> OpFunction: ...  # the op functions installed above

__version__ = "0.1.0"

__all__ = [
    "Limits", "Recovery", "TapeRecoveryWarning", "dumps", "load", "loads", "save",
    "ArgumentError", "CopyError", "UnsupportedError", "Function", "defop",
    "DTypeError", "GuardError", "LimitError", "NonFiniteError", "Record", "Tape", "TapeFormatError", "TapegradError",
    "TruncatedTapeError", "Variable", "grad", "hessian", "no_record", "record", "replay", "value_and_grad",
    *FUNCTIONS,
]
