"""The ``odespec`` command line: parse arguments, call the library, turn errors into messages
and exit codes. Exit codes: 0 success, 1 failure while building, 2 invalid spec or usage.

Kept thin on purpose; torch is imported only by commands that build.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
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
@click.option("--path", "show_path", is_flag=True,
              help="Print the path of the schema file odespec is installed with instead (for an editor's modeline).")
def schema(output: Optional[str], show_path: bool) -> None:
    """Print the JSON Schema of the spec language.

    For editors that speak the YAML language server, start a spec with the line
    `# yaml-language-server: $schema=PATH`, PATH from `odespec schema --path` (the installed
    file), or a copy written with `odespec schema -o FILE`, which also knows the layers and data
    sources of installed plugins.
    """
    from odespec.spec.schema import active_schema, schema_text, shipped_schema_path

    if show_path and output:
        raise click.UsageError("--path prints where the installed schema is, -o writes a copy: give one of them")

    def body() -> int:
        if show_path:
            click.echo(str(shipped_schema_path()))
            _warn_about_plugins()
            return EXIT_OK
        text = schema_text(active_schema())
        if output:
            from odespec.fileio import atomic_write_text

            atomic_write_text(output, text)
        else:
            click.echo(text, nl=False)
        return EXIT_OK

    _run(body)


def _warn_about_plugins() -> None:
    """The installed schema file knows the built-in layers and data sources only: say so when
    plugins add others, which an editor using that file would flag."""
    from odespec.layers import registry
    from odespec.train import data

    plugins = registry.plugin_names() + data.plugin_names()
    if plugins:
        click.echo(f"note: the installed schema does not know the plugins' {', '.join(plugins)}; for an editor, "
                   "write one that does with `odespec schema -o FILE` and name that file in the modeline", err=True)


class _StepsType(click.ParamType):
    """``--steps``: a step count from 1 to 100000, or ``auto`` (calibrate)."""

    name = "N|auto"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if value == "auto" or isinstance(value, int):
            return value
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a step count or 'auto'", param, ctx)
        if not 1 <= n <= 100_000:
            self.fail(f"{n} is not in the range 1<=x<=100000", param, ctx)
        return n


class _RuntimesType(click.ParamType):
    """``--verify``: runtime names separated by commas."""

    name = "RUNTIME[,RUNTIME...]"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if isinstance(value, tuple):
            return value
        names = tuple(n.strip() for n in str(value).split(",") if n.strip())
        if not names:
            self.fail("name at least one runtime, such as onnxruntime", param, ctx)
        return names


def _export_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The options ``build`` and ``export`` share: how the graph is laid out and how many steps."""
    options = [
        click.option("--method", help="Fixed-step method of the exported graph (default: the spec's "
                                      "export.onnx.method; with calibration, the only method searched)."),
        click.option("--steps", type=_StepsType(), help="Steps per output interval of each ODE block in the exported "
                                                        "graph, or auto to calibrate (default: the spec's)."),
        click.option("--loop/--no-loop", default=None, help="One ONNX Loop per output interval instead of unrolled "
                                                            "steps (default: the spec's export.onnx.loop)."),
        click.option("--match-tol", type=click.FloatRange(min=0, min_open=True, max=1),
                     help="Calibrate the step count: the cheapest fixed method and steps within this max abs error "
                          "of the model solved with its training solver (implies --steps auto; without it or "
                          "--match-agreement/--match-accuracy, calibration derives the tolerance from the training solver's "
                          "rtol/atol)."),
        click.option("--match-agreement", type=click.FloatRange(min=0, min_open=True, max=1),
                     help="Calibrate a classifier's step count on its predictions instead: the cheapest fixed "
                          "method and steps whose predicted classes (argmax) agree with the training-solver "
                          "model's on at least this fraction of the inputs, e.g. 0.999 (implies --steps auto)."),
        click.option("--match-accuracy", type=click.FloatRange(min=0, min_open=True, max=1),
                     help="Calibrate a classifier's step count on labelled data instead: the cheapest fixed method "
                          "and steps whose predicted classes are the labels y of at least this fraction of "
                          "--calibration-data FILE.npz, e.g. 0.97 (implies --steps auto)."),
        click.option("--grid", type=click.Choice(["auto", "uniform", "optimised"]),
                     help="With calibration: the fixed-step grids searched: uniform (steps equal steps per output "
                          "interval), optimised (also step points placed for the model, fitted on half the "
                          "calibration inputs and checked on the other half) or auto (optimised where they apply) "
                          "(default: the spec's export.onnx.grid, auto)."),
        click.option("--precision", type=click.Choice(["float32", "float16", "mixed"]),
                     help="Element types of the graph: float16 (weights, inputs, outputs, compute), mixed (float32 "
                          "inputs, outputs and ODE state accumulation, float16 layers and dynamics), float32 "
                          "(default: the spec's export.onnx.precision, else the model's dtype)."),
        click.option("--verify", type=_RuntimesType(),
                     help="Comma-separated runtimes to check the graph on, with parity and latency at batch 1 and 256: "
                          "onnxruntime, openvino, onnxruntime-cuda, onnxruntime-tensorrt (default: the spec's "
                          "export.onnx.verify, onnxruntime). GPU runtimes this machine lacks are skipped, with why."),
        click.option("--calibration-data", type=click.Path(dir_okay=False),
                     help="Inputs for calibration and the deployment error: .npy, .npz or .csv, as odespec run reads "
                          "them (default: seeded random inputs); a classifier's .npz with labels y also gives the "
                          "accuracy."),
        click.option("--correction", type=click.IntRange(0, 1024), metavar="HIDDEN",
                     help="Train a learned step correction (hypersolver) of this hidden width after calibration and "
                          "export it in the graph when it lowers the held-out error within the tolerance, on a "
                          "cheaper grid with --steps auto; the other options are the spec's export.onnx.correction "
                          "or its defaults; 0: none, whatever the spec says."),
        click.option("--parity-tol", type=click.FloatRange(min=0, min_open=True, max=1),
                     help="Largest max abs |onnxruntime - PyTorch| the parity check accepts (default: the spec's "
                          "export.onnx.parity_tol, 1e-5); float32 outputs of magnitude ~10 differ by a few 1e-6 "
                          "from rounding alone."),
        click.option("--strict", is_flag=True,
                     help="A large deployment error (see the warning at the end of the output) is an error: exit "
                          "non-zero and write nothing."),
        click.option("--triton-repo", type=click.Path(file_okay=False),
                     help="Also write a Triton Inference Server model repository here: DIR/NAME/1/model.onnx and "
                          "DIR/NAME/config.pbtxt (onnxruntime backend, dynamic batching)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _check_steps_options(flags: dict[str, Any]) -> None:
    """Usage errors among the export flags: a calibration criterion or ``--grid optimised``
    beside ``--steps N``, or more than one criterion."""
    if flags.get("grid") == "optimised" and isinstance(flags.get("steps"), int):
        raise click.UsageError("--grid optimised places the steps by calibration; it cannot be combined with "
                               "--steps N (use --steps auto, or leave --steps out)")
    given = ["--" + name.replace("_", "-") for name in ("match_tol", "match_agreement", "match_accuracy")
             if flags.get(name) is not None]
    for flag in given:
        if isinstance(flags.get("steps"), int):
            raise click.UsageError(f"{flag} calibrates the step count; it cannot be combined with --steps N "
                                   "(use --steps auto, or leave --steps out)")
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} are {('two', 'three')[len(given) - 2]} criteria for "
                               "calibration; give one")


def _check_weights_options(weights: Optional[str], initial_weights: bool) -> None:
    """``export`` is for trained models: without --weights it would silently write the untrained
    initial weights, which parity and the deployment error cannot reveal (they compare the file
    with the same untrained model)."""
    if weights is not None and initial_weights:
        raise click.UsageError("--weights and --initial-weights exclude each other: export trained weights, "
                               "or the initial ones")
    if weights is None and not initial_weights:
        raise click.UsageError(
            "odespec export needs --weights FILE, the trained weights to export: odespec train's "
            "RUN/model.safetensors, a checkpoint RUN/checkpoints/iter-N.safetensors, or a torch.save state dict. "
            "Without them the file would hold the spec's untrained initial weights; to export those on purpose, "
            "pass --initial-weights (odespec build does so by default)")


def _echo_build(result: Any, fmt: str) -> None:
    from odespec.report import render_build, render_warnings

    if fmt == "json":
        click.echo(json.dumps(result.report, indent=2))
        for line in render_warnings(result.report["warnings"]):  # the report has them; a person reads stderr
            click.echo(line, err=True)
    else:
        click.echo(render_build(result.report, result.export.path, result.report_path))


def _build(spec: str, out_dir: str, *, weights: Optional[str], device: Optional[str] = None,
           dtype: Optional[str] = None, triton_repo: Optional[str] = None, **flags: Any) -> Any:
    """``build_all`` with the export flags (``_export_options``' other options, named as the
    fields of ExportOptions) gathered into one ExportOptions."""
    from odespec.api import build_all
    from odespec.export.pipeline import ExportOptions

    return build_all(spec, out_dir, device=device, dtype=dtype, weights=weights, options=ExportOptions(**flags),
                     triton_repo=triton_repo)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", default="out", show_default=True, type=click.Path(file_okay=False),
              help="Directory for NAME.onnx and NAME.build.json.")
@_export_options
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Override the spec's device.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), help="Override the spec's dtype.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Trained weights to load before exporting (odespec train's RUN/model.safetensors, a training "
                   "checkpoint, or a torch.save state dict, loaded with weights_only=True); without them, the "
                   "spec's initial weights.")
@_FORMAT
def build(spec: str, out_dir: str, device: Optional[str], dtype: Optional[str], weights: Optional[str], fmt: str,
          **flags: Any) -> None:
    """Validate SPEC, compile it, export the fixed-step model to ONNX, check parity with
    onnxruntime, measure its error against the training solver and write a build report."""
    _check_steps_options(flags)

    def body() -> int:
        _echo_build(_build(spec, out_dir, weights=weights, device=device, dtype=dtype, **flags), fmt)
        return EXIT_OK

    _run(body, fmt)


@cli.command("export")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", default="out", show_default=True, type=click.Path(file_okay=False),
              help="Directory for NAME.onnx and NAME.build.json.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Trained weights to export (required, or --initial-weights): a state dict in a .safetensors "
                   "file or a torch.save file (loaded with weights_only=True), or a training checkpoint "
                   "(RUN/checkpoints/iter-N.safetensors or .json).")
@click.option("--initial-weights", is_flag=True,
              help="Export the spec's initial (seeded, untrained) weights on purpose, without --weights.")
@_export_options
@_FORMAT
def export_command(spec: str, out_dir: str, weights: Optional[str], initial_weights: bool, fmt: str,
                   **flags: Any) -> None:
    """Export SPEC's model, with trained --weights, to ONNX: the build pipeline (parity check,
    deployment error, calibration with --match-tol or steps: auto, report)."""
    _check_steps_options(flags)
    _check_weights_options(weights, initial_weights)

    def body() -> int:
        _echo_build(_build(spec, out_dir, weights=weights, **flags), fmt)
        return EXIT_OK

    _run(body, fmt)


@cli.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="Input array: .npy, .npz (the array named like the model's input, or the only one) or .csv "
                   "(rows = samples, columns = the flattened per-sample input; a header row is allowed). A model of "
                   "irregular series takes an .npz with an array per input: input (or x), times, mask, query_times.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the output to this .npy, .npz or .csv file instead of printing it.")
@click.option("--runtime", default="onnxruntime", show_default=True,
              help="The runtime to run it in: onnxruntime (CPU), openvino (CPU, float32: pip install "
                   "'odespec[openvino]'), onnxruntime-cuda or onnxruntime-tensorrt (a GPU and onnxruntime-gpu).")
@_FORMAT
def run_command(model: str, input_path: str, output: Optional[str], runtime: str, fmt: str) -> None:
    """Run the ONNX MODEL in onnxruntime (or --runtime) on an input array; print or write the output."""

    def body() -> int:
        from odespec.export.run import check_output_path, render_outputs, run_onnx, save_outputs

        if output:
            check_output_path(output)  # refuse an unknown format before running anything
        result = run_onnx(model, input_path, runtime=runtime)
        written = save_outputs(output, result) if output else None
        if fmt == "json":
            doc = {"ok": True, "model": model, **result.to_dict(with_data=written is None)}
            if written is not None:
                doc["written"] = str(written)
            click.echo(json.dumps(doc, indent=2))
        elif written is not None:
            shapes = ", ".join(f"{n} {tuple(y.shape)}" for n, y in zip(result.names, result.arrays, strict=True))
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


@cli.command("train")
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", "run_dir", type=click.Path(file_okay=False),
              help="Run directory for the spec copy, checkpoints, metrics.jsonl and model.safetensors "
                   "[default: runs/NAME].")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in this directory from its latest checkpoint.")
@click.option("--iterations", type=click.IntRange(1, 100_000_000), help="Override the spec's iterations (or epochs).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Override the spec's device.")
@click.option("--max-nfe", type=click.IntRange(1, 100_000_000),
              help="Override the spec's NFE budget (train.max_nfe): function evaluations per training forward pass.")
@_FORMAT
def train_command(spec: Optional[str], run_dir: Optional[str], resume_dir: Optional[str], iterations: Optional[int],
                  device: Optional[str], max_nfe: Optional[int], fmt: str) -> None:
    """Train the model SPEC describes, per its train section; or continue a run with --resume.

    Progress goes to stderr. Ctrl-C writes a checkpoint and exits with code 130; the message
    says how to resume. Under torchrun (torchrun --nproc-per-node N -m odespec train SPEC) the
    processes train data-parallel and only rank 0 writes.
    """

    if resume_dir is None and spec is None:
        raise click.UsageError("give a SPEC to train, or --resume RUN_DIR")
    if resume_dir is not None and run_dir is not None:
        raise click.UsageError("--resume continues in its own directory; -o is for new runs")

    def body() -> int:
        from odespec.train import TrainingInterrupted
        from odespec.train.allocator import keep_freed_memory
        from odespec.train.loop import resume, train

        keep_freed_memory()

        try:
            if resume_dir is not None:
                if spec is not None:
                    _same_spec_as_run(spec, resume_dir)
                result = resume(resume_dir, iterations=iterations, device=device, max_nfe=max_nfe)
            else:
                assert spec is not None
                result = train(spec, run_dir, iterations=iterations, device=device, max_nfe=max_nfe)
        except TrainingInterrupted as e:
            if fmt == "json":
                click.echo(json.dumps({"ok": False, "interrupted": True, "iteration": e.iteration,
                                       "total": e.total, "checkpoint": str(e.checkpoint),
                                       "resume": f"odespec train --resume {e.run_dir}"}, indent=2))
            click.echo(str(e), err=True)
            return e.exit_code
        if _rank() != 0:
            return EXIT_OK  # data-parallel: rank 0 reports for the run
        if fmt == "json":
            click.echo(json.dumps({"ok": True, **result.to_dict()}, indent=2))
        elif result.already_finished:
            click.echo(f"{result.run_dir} is already finished ({result.iterations} iterations); nothing was "
                       f"trained. To train longer: odespec train --resume {result.run_dir} --iterations N "
                       f"(N above {result.iterations})")
            click.echo(_kept_line(result.kept, result.weights) or f"its weights: {result.weights}")
        else:
            ev = "  ".join(f"{k} {v:.4g}" for k, v in result.evaluation.items())
            click.echo(f"trained {result.name}: {result.iterations} iterations in {result.seconds:.1f} s; "
                       f"last loss {result.last.get('loss', float('nan')):.4g}" + (f"; {ev}" if ev else ""))
            click.echo(f"wrote {result.weights}")
            click.echo(f"export with: odespec build {spec or result.run_dir / 'spec.yaml'} --weights {result.weights}")
            kept = _kept_line(result.kept, result.weights)
            if kept:
                click.echo(kept)
        return EXIT_OK

    _run(body, fmt)


@cli.command("plot")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False))
@click.option("-o", "--out-dir", type=click.Path(file_okay=False), help="Where to write the PNG files [default: RUN/plots].")
@_FORMAT
def plot_command(run_dir: str, out_dir: Optional[str], fmt: str) -> None:
    """Plot a training run: loss and NFE curves, and by model kind the learned against the true
    trajectories and the vector field (2-D trajectory models), reconstructions and extrapolation
    (the spirals latent ODE), observations, targets and outputs at each series' own times
    (irregular time series) or decision regions (2-D classifiers). Needs matplotlib:
    pip install 'odespec[plot]'."""

    def body() -> int:
        from odespec.train.plot import plot_run

        files = plot_run(run_dir, out_dir)
        if fmt == "json":
            click.echo(json.dumps({"ok": True, "files": [str(f) for f in files]}, indent=2))
        else:
            for f in files:
                click.echo(f"wrote {f}")
        return EXIT_OK

    _run(body, fmt)


def _kept_line(kept: dict[str, Any], weights: Path) -> Optional[str]:
    """Which weights a run that keeps its best evaluation wrote, and the last iterate's
    evaluation beside them; None for a run that kept its last iterate without choosing."""
    if "last" not in kept:
        return None
    metric, last = kept["metric"], kept["last"]

    def value(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else "not finite"

    where = weights.parent / last["file"]
    if kept["choice"] != "best":
        return (f"{kept['file']} holds the last iterate, iteration {last['iteration']}: no evaluation had a finite "
                f"{metric} to choose by ({kept['rule']}); {where} is the same")
    head = f"{kept['file']} holds the best evaluation ({kept['rule']})"
    if kept["iteration"] == last["iteration"]:
        return (f"{head}, the last iterate's: iteration {kept['iteration']}, {metric} {value(kept['value'])}; "
                f"{where} is the same")
    return (f"{head}: iteration {kept['iteration']}, {metric} {value(kept['value'])}; the last iterate, "
            f"iteration {last['iteration']}, {metric} {value(last['value'])}, is in {where}")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    import os

    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _same_spec_as_run(spec: str, run_dir: str) -> None:
    """``train SPEC --resume RUN``: SPEC must be the spec the run was trained with."""
    import hashlib

    from odespec.train import TrainError
    from odespec.train.rundir import read_run_info

    info = read_run_info(Path(run_dir))
    try:
        digest = hashlib.sha256(Path(spec).read_bytes()).hexdigest()
    except OSError as e:
        raise TrainError(f"cannot read {spec}: {e.strerror}") from None
    if digest != info.get("spec_sha256"):
        raise TrainError(f"{spec} is not the spec {run_dir} was trained with (it differs from "
                         f"{Path(run_dir) / 'spec.yaml'})", "resume without SPEC, or start a new run with -o DIR")


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="odespec")


if __name__ == "__main__":  # pragma: no cover
    main()
