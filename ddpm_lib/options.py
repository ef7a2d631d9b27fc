"""Options declared once (hand-written plumbing): a default, a help text and a check per field.

:func:`option` declares a dataclass field with its help text and its constraint. The two option
dataclasses of the package — :class:`ddpm_lib.config.TrainConfig` and
:class:`ddpm_lib.generation.SampleSpec` — declare every option this way, and everything else is
derived from those declarations: ``check_fields`` validates an instance (one message per bad value,
naming the field and what is allowed), ``from_dict`` rebuilds one from saved JSON with unknown and
missing keys refused by name, and the command line (:mod:`ddpm_lib.cli`) builds its options from the
same fields, so a default or a range is written in one place only: :func:`add_dataclass_options` makes the
argparse options, each absent from the parsed namespace unless given, so that :func:`given` tells what the command
line asked for.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any

from .errors import UsageError


class Check:
    """A constraint on one value: ``describe`` completes "must be ...", ``ok`` tests a value.

    ``describe`` may be a callable, for a text computed when it is needed (see :func:`one_of`).
    """

    def __init__(self, describe: str | Callable[[], str], ok: Callable[[Any], bool]):
        self._describe, self.ok = describe, ok

    @property
    def describe(self) -> str:
        return self._describe() if callable(self._describe) else self._describe

    def __call__(self, name: str, value: Any) -> None:
        if not self.ok(value):
            raise UsageError(f"{name} must be {self.describe}, got {value!r}", option=name)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int = 0) -> Check:
    """An integer >= ``minimum`` (1: "a positive integer", 0: "a non-negative integer")."""
    words = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    return Check(words, lambda v: _is_int(v) and v >= minimum)


def number(low: float = -math.inf, high: float = math.inf, *, low_open=False, high_open=False) -> Check:
    """A finite real number in the interval [low, high], with open ends where asked."""
    if low == 0 and high == math.inf and low_open:
        words = "a positive number"
    elif low == 0 and high == math.inf:
        words = "a number >= 0"
    elif high == math.inf:
        words = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        words = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def ok(v) -> bool:
        if not _is_real(v):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    return Check(words, ok)


def one_of(choices: Sequence[str] | Callable[[], Sequence[str]]) -> Check:
    """One of ``choices``, or of what the callable returns (a module's constant, read only when checked,
    so that declaring an option does not import the module that owns its choices)."""

    def allowed() -> tuple[str, ...]:
        return tuple(choices() if callable(choices) else choices)

    check = Check(lambda: "one of " + ", ".join(allowed()), lambda v: isinstance(v, str) and v in allowed())
    check.allowed = allowed
    return check


def optional(check: Check) -> Check:
    """``None`` or a value ``check`` accepts."""
    return Check(f"{check.describe} or None", lambda v: v is None or check.ok(v))


def integer_list(minimum: int = 1) -> Check:
    return Check(
        f"a non-empty list of integers >= {minimum}",
        lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) and x >= minimum for x in v),
    )


BOOLEAN = Check("true or false", lambda v: isinstance(v, bool))
TEXT = Check("a string", lambda v: isinstance(v, str))


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    check: Check | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None = None,
    cli: bool = True,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field with its help text and check. ``flag`` overrides the command-line spelling
    (default: ``--field-name``; for a boolean that defaults to true, the flag that turns it off);
    ``cli=False`` keeps a field off the command line (values a run records about itself); ``metavar`` names the
    value in the help, ``parse`` reads it from the command line's text (default: by the field's type)."""
    metadata = {"help": help, "check": check, "flag": flag, "cli": cli, "metavar": metavar, "parse": parse}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_fields(instance, prefix: str = "") -> None:
    """Run every field's check; raise :class:`UsageError` naming the first bad field."""
    for f in fields(instance):
        check = f.metadata.get("check")
        if check is not None:
            check(prefix + f.name, getattr(instance, f.name))


def option_fields(cls) -> list[Field]:
    return [f for f in fields(cls) if "help" in f.metadata]


def from_dict(cls, values: dict, what: str):
    """``cls(**values)`` for a dict read from a file: an unknown key is refused by name; a missing one takes the
    field's default (a field added after the file was written), and is refused only when the field has none.

    Nested option dataclasses (a field whose default is one) are rebuilt the same way.
    """
    if not isinstance(values, dict):
        raise UsageError(f"{what} must be a mapping of option names to values, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"{what} has unknown key(s) {', '.join(map(repr, unknown))}: it was written by "
                         f"another version of ddpm_lib (known keys: {', '.join(known)})")  # fmt: skip
    missing = sorted(name for name, f in known.items()
                     if name not in values and f.default is MISSING and f.default_factory is MISSING)  # fmt: skip
    if missing:
        raise UsageError(f"{what} lacks the key(s) {', '.join(map(repr, missing))}")
    kwargs = {}
    for name, f in known.items():
        if name not in values:
            continue
        value = values[name]
        nested = _nested_class(f)
        kwargs[name] = from_dict(nested, value, f"{what}[{name!r}]") if nested is not None else value
    return cls(**kwargs)


def _nested_class(f: Field):
    if f.default_factory is not MISSING:
        sample = f.default_factory()
        if hasattr(sample, "__dataclass_fields__"):
            return type(sample)
    return None


# --- the command line: argparse options made from the declarations (ddpm_lib.cli) -----------------------------


def _base_type(annotation) -> str:
    """``"int"``, ``"float"``, ``"str"``, ``"bool"`` or ``"int_list"`` for a field's or parameter's annotation."""
    text = annotation if isinstance(annotation, str) else repr(annotation)
    text = text.replace("typing.", "").replace("collections.abc.", "")
    if "[int]" in text and text.split("[")[0].strip() in ("Sequence", "list", "tuple"):
        return "int_list"
    base = text.split("|")[0].strip()
    return base[len("<class '") : -2] if base.startswith("<class '") else base


def value_parser(name: str, annotation, check: Check | None, parse=None):
    """An argparse ``type``: read the text (by ``parse``, else by the annotation's type), then apply ``check``."""
    base = _base_type(annotation)
    if parse is not None:
        convert = parse
    elif base == "int_list":

        def convert(text: str):
            return [] if text.strip().lower() == "none" else [int(v) for v in text.split(",") if v.strip()]
    else:
        convert = {"int": int, "float": float, "str": str}[base]

    def read(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {check.describe if check else base}, got {text!r}"
            ) from None
        if check is not None and not check.ok(value):
            raise argparse.ArgumentTypeError(f"expected {check.describe}, got {text!r}")
        return value

    read.__name__ = name  # argparse names the type in some messages
    return read


def add_option(target, flag: str, dest: str, default, help_text: str, annotation, check, *, parse=None,
                metavar=None) -> None:  # fmt: skip
    """One option whose value, when not given, is absent from the namespace (so that what was given is known)."""
    if _base_type(annotation) == "bool":
        target.add_argument(flag, dest=dest, action="store_false" if default else "store_true",
                            default=argparse.SUPPRESS, help=help_text)  # fmt: skip
        return
    allowed = check.allowed() if check is not None and hasattr(check, "allowed") else None
    shown = (",".join(map(str, default)) or "none") if isinstance(default, (list, tuple)) else default
    target.add_argument(
        flag,
        dest=dest,
        default=argparse.SUPPRESS,
        type=None if allowed else value_parser(dest, annotation, check, parse),
        choices=allowed,
        metavar=None if allowed else metavar or dest.split(".")[-1].upper(),
        help=help_text if "(default:" in help_text or default is None else f"{help_text} (default: {shown})",
    )


def add_dataclass_options(parser, cls, defaults, *, prefix: str = "", flags=None, exclude=(), targets=None):
    """One option per command-line field of ``cls``, its help showing ``defaults``' value; return {dest: flag}."""
    spelled = {}
    for f in option_fields(cls):
        if (
            not f.metadata["cli"]
            or f.name in exclude
            or hasattr(getattr(defaults, f.name), "__dataclass_fields__")
        ):
            continue
        flag = (flags or {}).get(f.name) or f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        target = (targets or {}).get(f.name, parser)
        add_option(target, flag, prefix + f.name, getattr(defaults, f.name), f.metadata["help"], f.type,
                    f.metadata["check"], parse=f.metadata.get("parse"), metavar=f.metadata.get("metavar"))  # fmt: skip
        spelled[prefix + f.name] = flag
    return spelled


def add_keyword_options(
    parser, function, options: dict, defaults: dict, prefix: str, title: str
) -> dict[str, str]:
    """One option per keyword argument of ``function`` named in ``options`` (``{name: (help, check)}``), in a group
    called ``title``, its help showing ``defaults``' value (else the signature's); return {dest: flag}. A
    ``num_classes``-style ``None`` default shows as 0."""
    import inspect

    signature = inspect.signature(function).parameters
    group = parser.add_argument_group(title)
    spelled = {}
    for name, (help_text, check) in options.items():
        default = defaults.get(name, signature[name].default)
        default = list(default) if isinstance(default, tuple) else 0 if default is None else default
        flag = "--" + name.replace("_", "-")
        add_option(group, flag, prefix + name, default, help_text, signature[name].annotation, check)
        spelled[prefix + name] = flag
    return spelled


def given(args: argparse.Namespace, prefix: str) -> dict:
    """The options given on the command line under ``prefix`` (``"spec."``, ``"grid."``, ``"model."``)."""
    return {name[len(prefix) :]: value for name, value in vars(args).items() if name.startswith(prefix)}
