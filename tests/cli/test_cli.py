"""The command line: commands, exit codes, formats, documentation, the installed script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from odespec.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "specs" / "ode_demo.yaml")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_validate_ok():
    r = run("validate", DEMO)
    assert r.exit_code == 0, r.output
    assert "ok (ode_demo, 252 parameters)" in r.stdout


def test_validate_json_reports_errors_and_ok_files(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("odespec: 1\nname: x\ninput: {shape: [2]}\nmodel: [{linaer: 3}]\n")
    r = run("validate", "--format", "json", DEMO, str(bad))
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["ok"] is False
    assert doc["results"][0]["ok"] is True
    err = doc["results"][1]["errors"][0]
    assert err["line"] == 4 and err["column"] == 10
    assert err["message"] == "unknown layer 'linaer'" and err["hint"] == "did you mean 'linear'?"


def test_schema_prints_the_shipped_schema():
    r = run("schema")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["title"] == "odespec model spec"
    assert r.stdout == (ROOT / "schemas" / "odespec.schema.json").read_text()


def test_schema_path_names_the_installed_schema_file(tmp_path: Path):
    r = run("schema", "--path")
    assert r.exit_code == 0, r.output
    path = Path(r.stdout.strip())
    assert path.is_absolute() and path.read_text() == (ROOT / "schemas" / "odespec.schema.json").read_text()
    assert run("schema", "--path", "-o", str(tmp_path / "s.json")).exit_code == 2
    assert not (tmp_path / "s.json").exists()


def test_usage_errors_exit_2():
    assert run("validate").exit_code == 2
    assert run("frobnicate").exit_code == 2
    assert run("build", DEMO, "--steps", "0").exit_code == 2


def test_build_writes_onnx_and_report(tmp_path: Path):
    r = run("build", DEMO, "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ode_demo.onnx").is_file()
    report = json.loads((tmp_path / "ode_demo.build.json").read_text())
    assert report["parameters"] == 252
    assert report["onnx"]["parity"]["max_abs_error"] <= 1e-5
    assert "total parameters: 252" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ode_demo.build.json", "ode_demo.onnx"]


def test_build_invalid_spec_exits_2_and_writes_nothing(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("odespec: 1\nname: x\ninput: {shape: [2]}\nmodel: [{linear: 0}]\n")
    out = tmp_path / "out"
    r = run("build", str(bad), "-o", str(out))
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert not out.exists()


def test_build_failure_exits_1_without_traceback(tmp_path: Path):
    r = run("build", DEMO, "-o", str(tmp_path), "--method", "dopri5")
    assert r.exit_code == 1
    assert "adaptive" in r.stderr and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_traceback(tmp_path: Path):
    r = run("--debug", "build", DEMO, "-o", str(tmp_path), "--method", "dopri5")
    assert r.exit_code == 1
    assert "Traceback" in r.stderr


def _commands_and_options():
    for name, cmd in cli.commands.items():
        yield name, None
        for p in cmd.params:
            if isinstance(p, click.Option):
                yield name, max(p.opts, key=len)


@pytest.mark.parametrize("command,option", list(_commands_and_options()))
def test_every_command_and_option_is_documented(command, option):
    readme = (ROOT / "README.md").read_text()
    assert f"odespec {command}" in readme
    if option:
        section = "\n".join(line for line in readme.splitlines() if f"odespec {command}" in line)
        assert option in section or option.replace("--", "-", 1) in section, f"{command} {option} not in README"
    help_text = run(command, "--help").stdout
    assert help_text and (option is None or option in help_text)


def test_validate_does_not_import_torch():
    code = ("import sys; from odespec.cli import main\n"
            "try:\n    main(['validate', %r])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "print('torch' in sys.modules)") % DEMO
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_console_script_and_module_entry_points(tmp_path: Path):
    script = shutil.which("odespec", path=str(Path(sys.executable).parent))
    assert script, "the odespec console script is not installed next to this Python"
    r = subprocess.run([script, "validate", DEMO], capture_output=True, text=True)
    assert r.returncode == 0 and "ok (ode_demo" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("odespec: 1\nname: x\ninput: {shape: [2]}\nmodel: [rleu]\n")
    r = subprocess.run([sys.executable, "-m", "odespec", "validate", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert re.search(r"bad\.yaml:4:9: error: model\[0\]: unknown layer 'rleu'", r.stderr), r.stderr
    assert "Traceback" not in r.stderr
