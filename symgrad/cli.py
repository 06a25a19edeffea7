"""The ``symgrad`` command: ``show``, ``generate``, ``check``, ``graph`` and ``demo``.

    symgrad show examples/window_classifier.py
    symgrad generate examples/*.py -o generated
    symgrad check examples/two_layer_net.py --against finite-differences,jax
    symgrad check examples/newton_logistic.py --order 2
    symgrad graph examples/branching_graph.py --at x=1 --at y=2 --at z=0 -o graph.svg
    symgrad demo

Errors are one line on stderr (``symgrad: error: ...``); the exit status is 0 on success, 1
when a command fails (or a check disagrees) and 2 for bad arguments.  ``--traceback`` shows
the full Python traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from symgrad.nodes import replaced

__all__ = ["main"]

CHECK_BACKENDS = ("finite-differences", "jax", "torch", "autograd")
# sg.check's aliases (symgrad.checking.runner._ALIASES), kept here: parsing the arguments
# imports nothing of symgrad.checking, whose absence ``check`` reports as its own error
CHECK_ALIASES = {"fd": "finite-differences", "finite_differences": "finite-differences"}


class CommandError(Exception):
    """A failure to report as ``symgrad: error: <message>`` and exit status 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symgrad",
        description="Symbolic gradients of SymPy models, compiled to Numba. A model file is a "
                    "Python file with sg.Model objects at module level (see examples/).")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    show = commands.add_parser("show", help="print the derived gradient formulas",
                               description="Print each model's value and derived gradients, "
                                           "shared pieces named once.")
    show.add_argument("files", nargs="+", metavar="FILE", help="model files")

    generate = commands.add_parser(
        "generate", help="write standalone modules (numpy + numba only)",
        description="Write one standalone module per model, DIR/<model name>.py, and print "
                    "its path. All models are derived before anything is written.")
    generate.add_argument("files", nargs="+", metavar="FILE", help="model files")
    generate.add_argument("-o", "--out", required=True, metavar="DIR", type=Path,
                          help="output folder (created if missing)")
    generate.add_argument("--check", action="store_true",
                          help="write nothing; exit 1 if any module in DIR is missing or "
                               "differs from what would be generated")

    check = commands.add_parser(
        "check", help="compare the gradients with finite differences and autodiff",
        description="Compare each model's compiled value and gradients with other methods at "
                    "random points; exit 1 if any disagrees.")
    check.add_argument("files", nargs="+", metavar="FILE", help="model files")
    check.add_argument("--against", default="finite-differences", type=_backends,
                       metavar="LIST",
                       help=f"comma-separated, from {', '.join(CHECK_BACKENDS)} "
                            "(fd for short), or all: every one installed (default: "
                            "finite-differences)")
    check.add_argument("--time", action="store_true", help="also time each method")
    check.add_argument("--points", type=_positive, default=3, metavar="N",
                       help="random points per model (default: 3)")
    check.add_argument("--seed", type=int, default=0, metavar="S",
                       help="random seed (default: 0)")
    check.add_argument("--order", type=int, choices=(1, 2), default=1,
                       help="1: value and gradients (default); 2: also the compiled Hessian "
                            "and Hessian-vector products (scalar output) or Jacobian")

    graph = commands.add_parser(
        "graph", help="draw the computation graph with values and gradients",
        description="Draw a model's computation graph the way the backpropagation lecture "
                    "does: inputs at the left, forward values above the edges, gradients "
                    "below, the output seeded with 1. Layout by Graphviz's dot program.")
    graph.add_argument("file", metavar="FILE", help="a model file")
    graph.add_argument("-o", "--out", required=True, metavar="PATH", type=Path,
                       help="the picture: .svg, .png, .pdf (or .dot for the DOT text)")
    graph.add_argument("--model", metavar="NAME",
                       help="which model of the file (needed when it has several)")
    graph.add_argument("--at", action="append", default=[], metavar="NAME=VALUE",
                       type=_assignment,
                       help="an input's value: a number, comma-separated numbers (a vector) "
                            "or a .npy file; repeat for each input")
    graph.add_argument("--random", type=int, metavar="SEED",
                       help="draw the inputs that --at does not give from a standard normal "
                            "distribution with this seed (symbolic dimensions get size 3 "
                            "unless --at sets them)")

    demo = commands.add_parser(
        "demo", help="derive, compile, check and time the seed models",
        description="For each seed model (examples/, or a built-in set when symgrad is "
                    "installed without them): show the formulas, compile, check against "
                    "finite differences, and time value-and-gradient against NumPy.")
    demo.add_argument("files", nargs="*", metavar="FILE",
                      help="model files to use instead of the seed models")
    return parser


def _backends(text: str) -> list[str]:
    """``--against``'s methods, with sg.check's aliases (``fd``) read as sg.check reads them."""
    names = [CHECK_ALIASES.get(n.strip(), n.strip()) for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECK_BACKENDS and n != "all"]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method {unknown[0]!r}; choose from {', '.join(CHECK_BACKENDS)} or all"
            if unknown else "give at least one method")
    return names


def _assignment(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` of ``--at``: a number, numbers separated by commas, or a .npy file."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    if value.endswith(".npy"):
        import numpy as np

        try:
            return name, np.load(value)
        except (OSError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{name}: cannot read {value}: {exc}") from None
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{name}={value}: not a number, comma-separated numbers or a .npy file") from None
    return name, numbers[0] if len(numbers) == 1 and "," not in value else numbers


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


# ------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------
def _load(files: Sequence[str]) -> list[tuple[str, list]]:
    from symgrad.generation import load_models

    return [(file, load_models(file)) for file in files]


def _show(args) -> int:
    from symgrad.codegen.docstring import FormulaPrinter
    from symgrad.generation import has_scalar_output

    first = True
    for file, models in _load(args.files):
        for model in models:
            if not first:
                print()
            first = False
            print(f"# {model.name}  ({file})")
            print(f"{model.name} = {FormulaPrinter().doprint(model.output)}")
            if has_scalar_output(model):
                print(_about(file, model, model.show))
            else:
                print(f"(a matrix output of shape {tuple(model.output.shape)}: its module has "
                      "forward and vjp)")
    return 0


def _about(file: str, model, action):
    """Run action(); an error names the file and model it came from."""
    try:
        return action()
    except Exception as exc:
        raise CommandError(f"{file}: model {model.name}: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}") from exc


def _generate(args) -> int:
    from symgrad.generation import plan_modules, write_modules

    loaded = _load(args.files)
    seen: dict[str, str] = {}
    for file, models in loaded:
        for model in models:
            if model.name in seen:
                raise CommandError(f"two models are named {model.name!r} ({seen[model.name]} "
                                   f"and {file}); each names its module, so names must differ")
            seen[model.name] = file
    planned = {}
    for file, models in loaded:
        for model in models:
            planned.update(_about(file, model, lambda m=model: plan_modules([m], args.out)))
    if args.check:
        stale = [path for path, text in planned.items()
                 if not path.is_file() or path.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"stale: {path}")
        if stale:
            raise CommandError(f"{len(stale)} generated module(s) out of date: run symgrad "
                               f"generate {' '.join(args.files)} -o {args.out}")
        print(f"{len(planned)} generated module(s) up to date")
        return 0
    for path in write_modules(planned):
        print(path)
    return 0


def _check(args) -> int:
    try:
        from symgrad.checking import check
    except ImportError as exc:
        raise CommandError(f"symgrad.checking is not available: {exc}") from exc
    all_ok = True
    reports = 0
    for file, models in _load(args.files):
        for model in models:
            report = _about(file, model, lambda m=model: check(
                m, against=args.against, points=args.points, seed=args.seed, time=args.time,
                order=args.order))
            print(("\n" if reports else "") + str(report))
            reports += 1
            all_ok = all_ok and bool(report.ok)
    return 0 if all_ok else 1


def _graph(args) -> int:
    from symgrad.present.graph import FORMATS, graph

    if args.out.suffix.lower() not in FORMATS:
        raise CommandError(f"cannot tell the picture's format from {args.out}: end it with "
                           f"{', '.join(FORMATS)}")
    (file, models), = _load([args.file])
    if args.model is not None:
        chosen = [m for m in models if m.name == args.model]
        if not chosen:
            raise CommandError(f"{file} has no model named {args.model!r} (models: "
                               f"{', '.join(m.name for m in models)})")
        model = chosen[0]
    elif len(models) == 1:
        model = models[0]
    else:
        raise CommandError(f"{file} has {len(models)} models ({', '.join(m.name for m in models)})"
                           "; choose one with --model NAME")
    at = dict(args.at)
    if args.random is not None:
        at = _random_inputs(model, at, args.random)
    picture = _about(file, model, lambda: graph(model, at=at or None))
    print(picture.save(args.out))
    return 0


def _random_inputs(model, given: dict, seed: int) -> dict:
    """Standard normal values for the inputs not given (dimensions not given: size 3)."""
    import numpy as np
    import sympy as sp
    from sympy.matrices.expressions.matexpr import MatrixExpr

    from symgrad.compiled import shape_symbols
    from symgrad.present.walk import dimension_size

    rng = np.random.default_rng(seed)
    try:
        dims = {d: dimension_size(d.name, given[d.name]) if d.name in given else 3
                for d in sorted(shape_symbols(model.output), key=lambda d: d.name)}
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    at = dict(given)
    for symbol in model.inputs:
        if symbol.name in at:
            continue
        shape = tuple(int(replaced(sp.sympify(e), dims)) for e in symbol.shape) \
            if isinstance(symbol, MatrixExpr) else ()
        at[symbol.name] = rng.standard_normal(shape)
    for d, size in dims.items():
        at.setdefault(d.name, size)
    return at


def _demo(args) -> int:
    from symgrad.demo import run_demo

    return run_demo(args.files or None)


_COMMANDS = {"show": _show, "generate": _generate, "check": _check, "graph": _graph,
             "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``symgrad`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit
    status.

    >>> main(["show", "examples/branching_graph.py"])  # doctest: +SKIP
    # branching_graph  (examples/branching_graph.py)
    ...
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("symgrad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `symgrad show ... | head`: the reader left; not an error worth a message (and
        # silence the interpreter's own complaint when it flushes stdout at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.traceback:
            raise
        from symgrad.generation import ModelFileError, OutputError

        if isinstance(exc, (CommandError, ModelFileError, OutputError)):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc} (run with --traceback for details)"
        print(f"symgrad: error: {' '.join(message.split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
