"""The ``odespec`` command line: parse arguments, call the library, turn errors into messages
and exit codes. Exit codes: 0 success, 1 failure while building, 2 invalid spec or usage.

Kept thin on purpose; torch is imported only by commands that build.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any, Callable, Optional

import click

from odespec import __version__
from odespec.errors import OdespecError, SpecError

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


class _State:
    debug = False


def _run(fn: Callable[[], int], fmt: str = "text") -> None:
    """Run a command body; map library errors to a message and an exit code, never a traceback
    (unless --debug)."""
    try:
        code = fn()
    except SpecError as e:
        if fmt == "json":
            click.echo(json.dumps({"ok": False, "errors": [i.to_dict() for i in e.issues]}, indent=2))
        else:
            click.echo(str(e), err=True)
        if _State.debug:
            traceback.print_exc()
        sys.exit(e.exit_code)
    except OdespecError as e:
        click.echo(f"error: {e}", err=True)
        if _State.debug:
            traceback.print_exc()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug in odespec: say so briefly, keep the traceback for --debug
        if _State.debug:
            traceback.print_exc()
        click.echo(f"internal error: {type(e).__name__}: {e}\n  hint: rerun with --debug for a traceback, "
                   "and report it", err=True)
        sys.exit(EXIT_FAILURE)
    sys.exit(code)


_FORMAT = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
                       help="Output format; json is for tools.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="odespec")
@click.option("--debug", is_flag=True, help="Show a traceback for errors.")
def cli(debug: bool) -> None:
    """odespec: compile neural ODE networks described in YAML into PyTorch and ONNX."""
    _State.debug = debug


@cli.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_FORMAT
def validate(specs: tuple[str, ...], fmt: str) -> None:
    """Check SPECS against the schema and the semantic rules; report every problem.

    Writes no file and imports no torch.
    """
    from odespec.spec import load_spec

    def body() -> int:
        results: list[dict[str, Any]] = []
        failed = False
        for path in specs:
            try:
                spec = load_spec(path)
            except SpecError as e:
                failed = True
                results.append({"file": path, "ok": False, "errors": [i.to_dict() for i in e.issues]})
                if fmt == "text":
                    click.echo(str(e), err=True)
                continue
            results.append({"file": path, "ok": True, "name": spec.name, "parameters": spec.num_params})
            if fmt == "text":
                click.echo(f"{path}: ok ({spec.name}, {spec.num_params:,} parameters)")
        if fmt == "json":
            click.echo(json.dumps({"ok": not failed, "results": results}, indent=2))
        return EXIT_INVALID if failed else EXIT_OK

    _run(body, fmt)


@cli.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the schema to this file instead.")
def schema(output: Optional[str]) -> None:
    """Print the JSON Schema of the spec language."""
    from odespec.spec.schema import active_schema, schema_text

    def body() -> int:
        text = schema_text(active_schema())
        if output:
            from odespec.fileio import atomic_write_text

            atomic_write_text(output, text)
        else:
            click.echo(text, nl=False)
        return EXIT_OK

    _run(body)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", default="out", show_default=True, type=click.Path(file_okay=False),
              help="Directory for NAME.onnx and NAME.build.json.")
@click.option("--method", help="Fixed-step method of the exported graph (default: the spec's export.onnx.method).")
@click.option("--steps", type=click.IntRange(1, 100_000), help="Steps per ODE block in the exported graph.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Override the spec's device.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), help="Override the spec's dtype.")
@_FORMAT
def build(spec: str, out_dir: str, method: Optional[str], steps: Optional[int], device: Optional[str],
          dtype: Optional[str], fmt: str) -> None:
    """Validate SPEC, compile it, export the unrolled model to ONNX, check parity with
    onnxruntime and write a build report."""

    def body() -> int:
        from odespec.api import build_all
        from odespec.report import render_build

        result = build_all(spec, out_dir, method=method, steps=steps, device=device, dtype=dtype)
        if fmt == "json":
            click.echo(json.dumps(result.report, indent=2))
        else:
            click.echo(render_build(result.report, result.export.path, result.report_path))
        return EXIT_OK

    _run(body, fmt)


@cli.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Input array: .npy, .npz (the array named like the model's input, or the only one) or .csv "
                   "(rows = samples, columns = the flattened per-sample input; a header row is allowed).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the output to this .npy, .npz or .csv file instead of printing it.")
@_FORMAT
def run_command(model: str, input_path: str, output: Optional[str], fmt: str) -> None:
    """Run the ONNX MODEL in onnxruntime on an input array; print or write the output."""

    def body() -> int:
        from odespec.export.run import check_output_path, render_outputs, run_onnx, save_outputs

        if output:
            check_output_path(output)  # refuse an unknown format before running anything
        result = run_onnx(model, input_path)
        written = save_outputs(output, result) if output else None
        if fmt == "json":
            doc = {"ok": True, "model": model, **result.to_dict(with_data=written is None)}
            if written is not None:
                doc["written"] = str(written)
            click.echo(json.dumps(doc, indent=2))
        elif written is not None:
            shapes = ", ".join(f"{n} {tuple(y.shape)}" for n, y in zip(result.names, result.arrays))
            click.echo(f"wrote {written}: {shapes}")
        else:
            click.echo(render_outputs(result))
        return EXIT_OK

    _run(body, fmt)


@cli.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@_FORMAT
def inspect_command(model: str, fmt: str) -> None:
    """Show what the ONNX file MODEL holds: metadata, inputs and outputs, opset, op counts,
    initializers, file size. Works on any ONNX file."""

    def body() -> int:
        from odespec.export.inspect import inspect_onnx, render_inspect

        info = inspect_onnx(model)
        click.echo(json.dumps(info, indent=2) if fmt == "json" else render_inspect(info))
        return EXIT_OK

    _run(body, fmt)


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="odespec")


if __name__ == "__main__":  # pragma: no cover
    main()
