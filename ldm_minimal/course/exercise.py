"""What an exercise is, for the learner's self-check, the grader and the sandbox alike.

An exercise asks for one answer (a function, a class or a value) named in its answer cell's metadata::

    "ldm_minimal": {"answer": "to_model_range", "banned": ["ldm_minimal.image_io.image_to_tensor"]}

``banned`` names the package symbols that already implement the answer. Calling one of them from the answer is
delegation, not a solution: while an exercise is checked (``lesson.check``) or graded, each banned symbol raises
:class:`DelegationError`, and the exercise scores 0 with the feedback "write your own implementation".

Its grading is a :class:`Spec`, written in the solution notebook's hidden-test block and never shown to learners::

    lesson.grading_spec("to_model_range", cases=_cases, reference=image_to_tensor)

- ``cases(g)`` draws the inputs from a generator seeded by the grader at grading time: a list of argument tuples
  made of data only (tensors, numpy arrays, numbers, strings, lists, dicts), so they can cross into the sandbox;
- ``probe(answer, *case)`` turns an answer and one case into data to compare (by default ``answer(*case)``; a
  probe builds a module from the case, or also returns a gradient); it runs in the sandbox on the learner's answer
  and in the grader on ``reference``;
- ``compare(got, want)`` raises ``AssertionError`` naming the first difference (by default :func:`compare_data`).

The verdict is computed in the grader's own process from the data the sandbox returns (see ``course/grade.py``);
nothing the learner's code does to its own process can change the reference it is compared with.
"""

from __future__ import annotations

import builtins
import importlib
import json
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType, FunctionType
from typing import Any, Callable, Iterator

import numpy as np
import torch

DELEGATION_FEEDBACK = "write your own implementation"


class DelegationError(RuntimeError):
    """Raised by a banned package symbol while an exercise that bans it is checked or graded."""

    def __init__(self, symbol: str) -> None:
        super().__init__(f"{symbol} is the package's own answer to this exercise: {DELEGATION_FEEDBACK}.")
        self.symbol = symbol

    @classmethod
    def here(cls) -> "DelegationError":
        """The error for the function whose frame called this (a stub made by :func:`banned_symbols`)."""
        frame = sys._getframe(1)
        return cls(f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname}")


def call_answer(answer: Any, *case: Any) -> Any:
    return answer(*case) if callable(answer) else answer


@dataclass
class Spec:
    """How one exercise is graded (see the module docstring)."""

    name: str
    cases: Callable[[torch.Generator], list[tuple]]
    reference: Any
    probe: Callable[..., Any] = call_answer
    compare: Callable[[Any, Any], None] | None = None
    atol: float = 1e-5
    rtol: float = 1e-4
    exact_dtype: bool = False  # also the dtype itself (float32 vs float64), not only its family
    fallback: Any = None  # what later exercises use when this one fails (default: reference)

    def check(self, got: Any, want: Any) -> None:
        if self.compare is not None:
            self.compare(got, want)
        else:
            compare_data(got, want, atol=self.atol, rtol=self.rtol, exact_dtype=self.exact_dtype)

    def fallback_answer(self) -> Any:
        return self.reference if self.fallback is None else self.fallback


# specs registered by the hidden-test blocks executed in this process (the grader reads and clears it)
SPECS: dict[str, Spec] = {}


def register(spec: Spec) -> Spec:
    SPECS[spec.name] = spec
    return spec


# ---------------------------------------------------------------------------------------------------------
# an exception, as data


@dataclass
class Raised:
    """An exception a probe raised, as data: its class names (most derived first) and its message."""

    names: list[str]
    message: str
    delegation: str | None = None

    @classmethod
    def of(cls, err: BaseException) -> "Raised":
        names = [k.__name__ for k in type(err).__mro__ if k not in (object, BaseException)]
        symbol = getattr(err, "symbol", None) if isinstance(err, DelegationError) else None
        return cls(names, str(err)[:500], symbol if isinstance(symbol, str) else None)

    def describe(self) -> str:
        return f"{self.names[0] if self.names else 'an error'}: {self.message}".strip().rstrip(":")


def run_probe(probe: Callable[..., Any], answer: Any, case: tuple) -> Any:
    """``probe(answer, *case)``, or the :class:`Raised` it ended with (whatever it raised, even SystemExit)."""
    try:
        return probe(answer, *case)
    except BaseException as err:  # a learner's code may raise anything, KeyboardInterrupt and SystemExit included
        return Raised.of(err)


# ---------------------------------------------------------------------------------------------------------
# data that crosses the sandbox: JSON for the structure, safetensors for the tensors (no pickle, ever)

_MAX_DEPTH = 20


def encode(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """obj -> (a JSON-able structure, {key: tensor}). Unknown types become a marker naming the type."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            return {"__unsupported__": "nesting deeper than 20 levels"}
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, (int, np.integer)) and not isinstance(x, np.bool_):
            return {"__int__": str(int(x))} if abs(int(x)) >= 2**53 else int(x)
        if isinstance(x, (float, np.floating)):
            v = float(x)
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, (torch.Tensor, np.ndarray)):
            kind = "tensor" if isinstance(x, torch.Tensor) else "ndarray"
            try:
                t = x.detach() if kind == "tensor" else torch.from_numpy(np.ascontiguousarray(x))
                t = t.to("cpu").contiguous().clone()
            except (TypeError, RuntimeError) as e:
                return {"__unsupported__": f"{kind} that cannot be stored ({e})"}
            key = str(len(tensors))
            tensors[key] = t
            return {f"__{kind}__": key}
        if isinstance(x, Raised):
            return {"__raised__": x.names, "message": x.message, "delegation": x.delegation}
        if isinstance(x, (list, tuple)):
            return {"__tuple__": [enc(v, depth + 1) for v in x]} if isinstance(x, tuple) else [enc(v, depth + 1) for v in x]
        if isinstance(x, dict):
            if not all(isinstance(k, str) for k in x):
                return {"__unsupported__": "a dict with keys that are not strings"}
            return {"__dict__": {k: enc(v, depth + 1) for k, v in x.items()}}
        return {"__unsupported__": type(x).__name__}

    return enc(obj, 0), tensors


def decode(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode` (an unsupported marker stays a marker: :func:`compare_data` reports it)."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if "__tuple__" in x:
            return tuple(dec(v) for v in x["__tuple__"])
        if "__dict__" in x:
            return {k: dec(v) for k, v in x["__dict__"].items()}
        if "__tensor__" in x:
            return tensors[x["__tensor__"]]
        if "__ndarray__" in x:
            return tensors[x["__ndarray__"]].numpy()
        if "__int__" in x:
            return int(x["__int__"])
        if "__float__" in x:
            return float(x["__float__"])
        if "__raised__" in x:
            return Raised(list(x["__raised__"]), str(x.get("message", "")), x.get("delegation"))
        return x  # {"__unsupported__": ...}

    return dec(structure)


def round_trip(obj: Any) -> Any:
    """``obj`` as the other side of the sandbox sees it: encoded and decoded again (tensors copied)."""
    return decode(*encode(obj))


def data_bytes(obj: Any) -> bytes:
    """``obj`` as the bytes of one safetensors file (its structure in the header's metadata)."""
    from safetensors.torch import save

    structure, tensors = encode(obj)
    return save(tensors, metadata={"ldm_minimal.data": json.dumps(structure)})


def save_data(path: str, obj: Any) -> None:
    """Write ``obj`` to one safetensors file (see :func:`data_bytes`)."""
    with open(path, "wb") as fh:
        fh.write(data_bytes(obj))


def load_data(path: str, max_bytes: int = 256 << 20) -> Any:
    """Read what :func:`save_data` wrote; raises ValueError for a missing, oversized or malformed file."""
    from safetensors import safe_open

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise ValueError("no results were written")
    if os.path.getsize(path) > max_bytes:
        raise ValueError(f"the results file is larger than {max_bytes >> 20} MB")
    try:
        with safe_open(path, "pt") as fh:
            structure = json.loads((fh.metadata() or {})["ldm_minimal.data"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # a damaged or forged file: whatever safetensors or json raise
        raise ValueError(f"the results file cannot be read ({type(e).__name__}: {e})") from None
    return decode(structure, tensors)


# ---------------------------------------------------------------------------------------------------------
# comparing an answer's data with the reference's


def _kind(x: Any) -> str:
    if isinstance(x, Raised):
        return "an exception"
    if isinstance(x, torch.Tensor):
        return "a torch.Tensor"
    if isinstance(x, np.ndarray):
        return "a numpy array"
    if isinstance(x, bool):
        return "a bool"
    if isinstance(x, (int, float)):
        return "a number"
    if isinstance(x, dict) and "__unsupported__" in x:
        return f"a {x['__unsupported__']}"
    return f"a {type(x).__name__}"


def _dtype_family(dtype: Any) -> str:
    name = str(dtype)
    return "bool" if "bool" in name else "float" if ("float" in name or "complex" in name) else "integer"


def compare_data(got: Any, want: Any, where: str = "the result", atol: float = 1e-5, rtol: float = 1e-4,
                 exact_dtype: bool = False) -> None:
    """Raise AssertionError naming the first place where ``got`` differs from ``want``.

    Tensors and arrays: same type, shape and dtype family (float/integer/bool); floats within atol + rtol * |want|,
    the rest exactly. Numbers within the same tolerance. An expected exception matches one of the same class (or a
    subclass); tuples and lists are interchangeable.
    """
    if isinstance(want, Raised):
        if isinstance(got, Raised):
            if want.names[0] not in got.names:
                raise AssertionError(f"{where}: raised {got.describe()}, expected a {want.names[0]}")
            return
        raise AssertionError(f"{where}: returned {_kind(got)}, expected it to raise a {want.names[0]}")
    if isinstance(got, Raised):
        if got.delegation:
            raise AssertionError(f"{where}: your code called {got.delegation}, the package's own answer: "
                                 f"{DELEGATION_FEEDBACK}")
        raise AssertionError(f"{where}: raised {got.describe()}")
    if isinstance(want, (torch.Tensor, np.ndarray)):
        if type(got) is not type(want) and not (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)):
            raise AssertionError(f"{where}: {_kind(got)}, expected {_kind(want)}")
        g = got if isinstance(got, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(got))
        w = want if isinstance(want, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(want))
        if tuple(g.shape) != tuple(w.shape):
            raise AssertionError(f"{where}: shape {tuple(g.shape)}, expected {tuple(w.shape)}")
        if _dtype_family(g.dtype) != _dtype_family(w.dtype) or (exact_dtype and g.dtype != w.dtype):
            raise AssertionError(f"{where}: dtype {str(g.dtype).replace('torch.', '')}, expected "
                                 f"{str(w.dtype).replace('torch.', '')}")
        if _dtype_family(w.dtype) == "float":
            g64, w64 = g.double(), w.double()
            close = torch.isclose(g64, w64, atol=atol, rtol=rtol, equal_nan=True)
            if not bool(close.all()):
                diff = (g64 - w64).abs().nan_to_num(nan=float("inf"), posinf=float("inf")).max().item()
                raise AssertionError(f"{where}: values differ (largest difference {diff:.3g}, "
                                     f"{int((~close).sum())} of {close.numel()} entries)")
        elif not torch.equal(g.long() if g.dtype != torch.bool else g, w.long() if w.dtype != torch.bool else w):
            raise AssertionError(f"{where}: {int((g != w).sum())} of {w.numel()} entries differ")
        return
    if isinstance(want, bool):
        if not isinstance(got, bool) or got != want:
            raise AssertionError(f"{where}: {got!r}, expected {want!r}")
        return
    if isinstance(want, (int, float)):
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise AssertionError(f"{where}: {_kind(got)}, expected a number ({want!r})")
        if not (math.isclose(got, want, rel_tol=rtol, abs_tol=atol) or (math.isnan(got) and math.isnan(want))):
            raise AssertionError(f"{where}: {got!r}, expected {want!r}")
        return
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            raise AssertionError(f"{where}: {_kind(got)}, expected a sequence of {len(want)}")
        if len(got) != len(want):
            raise AssertionError(f"{where}: {len(got)} items, expected {len(want)}")
        for i, (g, w) in enumerate(zip(got, want)):
            compare_data(g, w, f"{where}[{i}]", atol, rtol, exact_dtype)
        return
    if isinstance(want, dict):
        if not isinstance(got, dict) or "__unsupported__" in got:
            raise AssertionError(f"{where}: {_kind(got)}, expected a dict")
        if set(got) != set(want):
            raise AssertionError(f"{where}: keys {sorted(got)}, expected {sorted(want)}")
        for k in want:
            compare_data(got[k], want[k], f"{where}[{k!r}]", atol, rtol, exact_dtype)
        return
    if got != want:
        raise AssertionError(f"{where}: {got!r}, expected {want!r}")


# ---------------------------------------------------------------------------------------------------------
# banned symbols


def resolve(symbol: str) -> tuple[Any, str, Any]:
    """'pkg.module.Class.method' -> (owner object, attribute name, value); ValueError if it does not resolve."""
    parts = symbol.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:-1]:
                owner = getattr(owner, attr)
            return owner, parts[-1], getattr(owner, parts[-1])
        except AttributeError:
            break
    raise ValueError(f"banned symbol {symbol!r} does not name a function, method or class of the package")


def functions_of(value: Any) -> list[FunctionType]:
    """The plain functions behind a function, method, property, staticmethod or class (all its methods)."""
    if isinstance(value, type):
        found = []
        for attr in vars(value).values():
            found += functions_of(attr)
        return found
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset) if isinstance(f, FunctionType)]
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    value = getattr(value, "__wrapped__", value)
    return [value] if isinstance(value, FunctionType) else []


def _stub_code(original: CodeType) -> CodeType | None:
    """A code object that raises DelegationError, with ``original``'s names and free variables (so it can replace
    ``original`` in place); None when that cannot be arranged."""
    free = original.co_freevars
    lines = ["def _outer():", *[f"    {n} = None" for n in free], "    def _stub(*args, **kwargs):"]
    if free:
        lines.append(f"        ({', '.join(free)},)")
    lines += ["        raise __import__('ldm_minimal.course.exercise', fromlist=['x']).DelegationError.here()",
              "    return _stub"]
    scope: dict[str, Any] = {"__builtins__": builtins}
    exec(compile("\n".join(lines), original.co_filename, "exec"), scope)  # noqa: S102 - our own fixed text
    code = scope["_outer"]().__code__
    if code.co_freevars != free:
        return None
    return code.replace(co_name=original.co_name, co_qualname=original.co_qualname, co_filename=original.co_filename,
                        co_firstlineno=original.co_firstlineno)


@contextmanager
def banned_symbols(symbols: list[str] | tuple[str, ...]) -> Iterator[list[str]]:
    """Within the block, every banned symbol raises DelegationError wherever it is called from (also through names
    bound before the block: the function's code is swapped in place). Yields the symbols that could not be stubbed.
    """
    swapped: list[tuple[FunctionType, CodeType]] = []
    missed: list[str] = []
    try:
        for symbol in symbols:
            _, _, value = resolve(symbol)
            functions = functions_of(value)
            if not functions:
                missed.append(symbol)
            for fn in functions:
                stub = _stub_code(fn.__code__)
                if stub is None:
                    missed.append(f"{symbol} ({fn.__qualname__})")
                    continue
                swapped.append((fn, fn.__code__))
                fn.__code__ = stub
        yield missed
    finally:
        for fn, code in reversed(swapped):
            fn.__code__ = code


@dataclass
class AnswerCell:
    """One exercise of a notebook, as the grader reads it from the cells' metadata."""

    answer: str  # the name the answer cell defines (metadata ldm_minimal.answer)
    grade_id: str  # the answer cell's nbgrader grade_id
    check_id: str  # the graded check cell's grade_id
    points: float
    banned: list[str] = field(default_factory=list)
    spec_source: str = ""  # the hidden-test block of the check cell
