"""The train section: schema and semantic checks, located messages, defaults, the shipped
train sections; validation still imports neither torch nor numpy."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import odespec
from odespec.errors import SpecError
from odespec.spec import parse_spec
from odespec.spec.model import ScheduleSpec

from train_helpers import ROOT, circles_spec, demo_spec, latent_spec

HEAD = "odespec: 1\nname: t\ninput: {shape: [2]}\n"
TRAJ = HEAD + """model:
  - ode:
      t: [0, 0.5, 1.0]
      output: trajectory
      dynamics: {layers: [{linear: 8}, tanh, {linear: 2}]}
      solver: {method: rk4, steps: 2}
"""
CLASSIFIER = HEAD + "model:\n  - ode: {augment: 1, dynamics: {layers: [{linear: 8}, tanh, {linear: 3}]}}\n  - linear: 2\n"


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(text, "s.yaml")
    return [i.format() for i in e.value.issues]


def test_tiny_specs_validate_with_defaults_filled_in():
    demo = parse_spec(demo_spec()).train
    assert demo.data.source == "ode_demo" and dict(demo.data.options) == {"points": 60, "stop": 2.95, "batch_time": 4}
    assert demo.optimizer.method == "rmsprop" and demo.optimizer.alpha == 0.99 and demo.schedule.kind == "constant"
    assert demo.init.weights == "normal" and demo.init.std == 0.1 and demo.seed == 0 and demo.device is None
    latent = parse_spec(latent_spec()).train
    assert latent.loss.kind == "elbo" and latent.loss.noise_std == 0.3  # from the spirals' noise_std
    circles = parse_spec(circles_spec()).train
    assert circles.loss.kind == "cross_entropy"  # class labels: the default loss
    assert circles.optimizer.nesterov and circles.schedule.every == 4 and circles.schedule.gamma == 0.5


def test_shipped_train_sections():
    demo = odespec.load_spec(ROOT / "specs" / "ode_demo_train.yaml").train
    assert (demo.optimizer.method, demo.lr, demo.iterations, demo.batch_size, demo.loss.kind) == ("rmsprop", 1e-3, 2000, 20, "l1")
    assert demo.data.options["batch_time"] == 10 and demo.init.std == 0.1
    spiral = odespec.load_spec(ROOT / "specs" / "spiral_latent_ode.yaml").train
    assert (spiral.optimizer.method, spiral.lr, spiral.iterations, spiral.batch_size) == ("adam", 0.01, 2000, 1000)
    assert spiral.loss.noise_std == 0.3 and spiral.data.options["count"] == 1000
    assert spiral.data.options["stop"] == pytest.approx(6 * math.pi)


def test_ode_demo_times_must_be_the_windows_times():
    msgs = errors(TRAJ + "train:\n  data: {ode_demo: {batch_time: 3}}\n  loss: l1\n")
    assert msgs == [
        "s.yaml:6:10: error: model[0].ode.t: the ode_demo data are windows of the true trajectory: 3 times "
        "0.025025 apart from 0 (up to 0.0500501); this block's t has 3 times from 0 to 1\n"
        "  hint: write t: {start: 0, stop: 0.05005005005005005, num: 3} in that ODE block, or change "
        "train.data.ode_demo"]
    fixed = TRAJ.replace("[0, 0.5, 1.0]", "{start: 0, stop: 0.05005005005005005, num: 3}")
    assert parse_spec(fixed + "train:\n  data: {ode_demo: {batch_time: 3}}\n  loss: l1\n").train is not None


def test_data_must_fit_the_model():
    assert errors(TRAJ + "train:\n  data: {ode_demo: {batch_time: 4}}\n") == [
        "s.yaml:11:9: error: train.data: the ode_demo data have inputs (2) and targets (4, 2); the model "
        "outputs (3, 2)\n  hint: the model's output must have the targets' shape"]
    assert errors(CLASSIFIER.replace("[2]}", "[3]}").replace("linear: 3", "linear: 4") + "train: {data: circles}\n")[0] \
        .endswith("train.data: the circles data have inputs (2) and 2 classes; the model's input is (3)\n"
                  "  hint: write input: {shape: [2]}")
    assert "loss 'mse' compares values" in errors(CLASSIFIER + "train: {data: circles, loss: mse}\n")[0]
    assert "cross_entropy takes one score per class" in errors(TRAJ + "train: {data: ode_demo, loss: cross_entropy}\n")[0]


def test_elbo_needs_a_gaussian_layer_and_a_noise_std():
    assert "the model has 0" in errors(CLASSIFIER + "train: {data: {npz: d.npz}, loss: {kind: elbo, noise_std: 1}}\n")[0]
    assert "needs the observation noise's standard deviation" in \
        errors(CLASSIFIER + "train: {data: {npz: d.npz}, loss: elbo}\n")[0]


@pytest.mark.parametrize("train, message", [
    ("{data: spiral}", "train.data: unknown data source 'spiral'\n  hint: did you mean 'spirals'?"),
    ("{data: circles, optimizer: adamm}", "train.optimizer: unknown optimizer 'adamm'\n  hint: did you mean 'adam'?"),
    ("{data: circles, optimizer: {method: adam, momentum: 0.9}}",
     "train.optimizer.momentum: 'momentum' is not an option of optimizer 'adam'\n  hint: 'adam' takes: weight_decay, betas, eps"),
    ("{data: circles, optimizer: {method: sgd, nesterov: true}}", "train.optimizer.nesterov: nesterov needs momentum"),
    ("{data: circles, schedule: {kind: step}}", "train.schedule: a step schedule needs `every`"),
    ("{data: circles, schedule: {kind: cosine, every: 3}}", "'every' is not an option of schedule 'cosine'"),
    ("{data: circles, schedule: {kind: cosine, min_lr: 1}}", "train.schedule.min_lr: min_lr 1 is above lr 0.001"),
    ("{data: circles, schedule: {kind: multistep}}", "train.schedule: a multistep schedule needs `milestones`"),
    ("{data: circles, schedule: {kind: multistep, milestones: [60, 60, 140]}}",
     "train.schedule.milestones[1]: milestones must be strictly increasing: 60 follows 60\n"
     "  hint: milestones count iterations; list each once, in increasing order"),
    ("{data: circles, epochs: 3, schedule: {kind: multistep, milestones: [3, 2]}}",
     "hint: milestones count epochs; list each once"),
    ("{data: circles, schedule: {kind: multistep, milestones: [0, 10]}}", "train.schedule.milestones[0]: 0 is not >= 1"),
    ("{data: circles, schedule: {kind: multistep, milestones: []}}", "train.schedule.milestones: needs at least 1 item"),
    ("{data: circles, schedule: {kind: multistep, milestones: 60}}", "train.schedule.milestones: expected a list"),
    ("{data: circles, schedule: {kind: multistep, milestones: [10], every: 3}}",
     "train.schedule.every: 'every' is not an option of schedule 'multistep'\n  hint: 'multistep' takes: milestones, gamma"),
    ("{data: circles, schedule: {kind: multistep, milestones: [10], gamma: 0}}", "train.schedule.gamma: 0 is not > 0"),
    ("{data: {mnist: {dir: d, random_crop: 4}}}", "train.data.mnist.random_crop: expected a mapping, got 4"),
    ("{data: {mnist: {dir: d, random_crop: {}}}}", "train.data.mnist.random_crop: missing required key 'padding'"),
    ("{data: {mnist: {dir: d, random_crop: {size: 24}}}}",
     "train.data.mnist.random_crop.size: unknown key 'size'\n  hint: allowed keys: padding"),
    ("{data: {mnist: {dir: d, random_crop: {padding: 28}}}}", "train.data.mnist.random_crop.padding: 28 is not <= 27"),
    ("{data: {mnist: {dir: d, random_crop: {padding: -1}}}}", "train.data.mnist.random_crop.padding: -1 is not >= 0"),
    ("{data: circles, iterations: 5, epochs: 2}", "train.epochs: give iterations or epochs, not both"),
    ("{data: circles, init: {std: 0.2}}", "train.init.std: std applies to weights: normal"),
    ("{data: npz}", "train.data: data source 'npz' needs options (path)\n  hint: write data: {npz: VALUE}"),
    ("{data: {circles: {}, npz: a.npz}}", "train.data: give exactly one data source, as {source: options}; got 'circles', 'npz'"),
    ("{data: {}}", "got none"),
    ("{data: {circles: {r1: 2}}}", "the radii must grow: r1 < r2 < r3, got 2, 1, 1.5"),
    ("{data: circles, loss: {kind: mse, noise_std: 1}}", "'noise_std' is not an option of loss 'mse'"),
    ("{data: circles, batch_size: 0}", "train.batch_size: 0 is not >= 1"),
    ("{data: circles, device: gpu}", "train.device: 'gpu' is not one of: 'cpu', 'cuda'"),
    ("{loss: mse}", "train: missing required key 'data'"),
])
def test_train_section_errors(train: str, message: str):
    msgs = errors(CLASSIFIER + f"train: {train}\n")
    assert any(message in m for m in msgs), msgs


def test_init_needs_a_linear_layer_in_dynamics():
    text = HEAD + "model:\n  - linear: 2\ntrain: {data: {npz: d.npz}, init: {weights: normal}}\n"
    assert "init re-initialises the linear layers of ODE dynamics; this model has none" in errors(text)[0]


def test_train_problems_are_reported_with_model_problems():
    # a semantic model error (the dynamics change the shape): the train section is still checked
    text = HEAD + ("model:\n  - ode: {dynamics: {layers: [{linear: 3}]}}\n"
                   "train: {data: circles, optimizer: {method: adam, momentum: 1}}\n")
    msgs = errors(text)
    assert len(msgs) == 2 and "must keep the state's shape" in msgs[0] and "'momentum' is not an option" in msgs[1]


def test_validating_a_train_spec_imports_neither_torch_nor_numpy():
    code = ("import sys, odespec; "
            "[odespec.load_spec(p) for p in sys.argv[1:]]; "
            "print(json.dumps(sorted(m for m in ('torch', 'numpy') if m in sys.modules)))")
    specs = [str(ROOT / "specs" / n) for n in ("ode_demo_train.yaml", "spiral_latent_ode.yaml", "circles_anode.yaml")]
    out = subprocess.run([sys.executable, "-c", "import json; " + code, *specs], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_milestone_errors_are_located_and_all_reported():
    msgs = errors(CLASSIFIER + "train:\n  data: circles\n  schedule: {kind: multistep, milestones: [100, 60, 140, 140]}\n")
    assert msgs == [
        "s.yaml:9:49: error: train.schedule.milestones[1]: milestones must be strictly increasing: 60 follows 100\n"
        "  hint: milestones count iterations; list each once, in increasing order, e.g. milestones: [60, 100, 140]",
        "s.yaml:9:58: error: train.schedule.milestones[3]: milestones must be strictly increasing: 140 follows 140\n"
        "  hint: milestones count iterations; list each once, in increasing order, e.g. milestones: [60, 100, 140]"]


def test_mnist_random_crop_option():
    text = "odespec: 1\nname: t\ninput: {shape: [1, 28, 28]}\nmodel: [flatten, {linear: 10}]\n"
    crop = parse_spec(text + "train: {data: {mnist: {dir: d, random_crop: {padding: 4}}}}\n").train.data
    assert crop.options["random_crop"] == {"padding": 4}
    assert parse_spec(text + "train: {data: {mnist: d}}\n").train.data.options["random_crop"] is None


def test_readme_documents_every_data_source_option_and_schedule():
    from odespec.train import data as sources
    from odespec.train.check import SCHEDULE_OPTIONS

    readme = (ROOT / "README.md").read_text()
    training = readme[readme.index("## Training"):readme.index("## Errors")]
    for source in sources.all_sources():
        (row,) = [line for line in training.splitlines() if line.startswith(f"| `{source.name}` |")]
        for option in source.properties:
            assert f"`{option}" in row, f"train.data.{source.name}.{option} is not in the README's table"
    (row,) = [line for line in training.splitlines() if line.startswith("| `schedule` |")]
    for kind, options in SCHEDULE_OPTIONS.items():
        assert kind in row and all(o in row for o in options), kind
    assert "`odespec.data` entry-point group" in training


def test_readmes_paper_mnist_training_validates_with_the_shipped_odenet():
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in (c.split("```")[0] for c in readme.split("```yaml\n")[1:]) if "random_crop" in b)
    spec = parse_spec((ROOT / "specs" / "mnist_odenet.yaml").read_text() + block).train
    assert spec.schedule == ScheduleSpec("multistep", gamma=0.1, milestones=(60, 100, 140), unit="epochs")
    assert (spec.lr, spec.epochs, spec.batch_size, spec.optimizer.method, spec.optimizer.momentum) == \
        (0.1, 160, 128, "sgd", 0.9)
    assert spec.data.options["random_crop"] == {"padding": 4}


def test_the_regularised_latent_spec_differs_only_by_its_regularisers():
    """The NFE table in benchmarks/RESULTS.md compares the two: nothing else may differ."""
    import yaml

    base, reg = (yaml.safe_load((ROOT / "specs" / f).read_text()) for f in
                 ("spiral_latent_ode.yaml", "spiral_latent_ode_rnode.yaml"))
    assert reg["train"].pop("regularise") == {"kinetic": 10, "jacobian": 10}
    for key in ("name", "description"):
        del base[key], reg[key]
    assert reg == base
    spec = odespec.load_spec(ROOT / "specs" / "spiral_latent_ode_rnode.yaml")
    assert (spec.train.regularise.kinetic, spec.train.regularise.jacobian) == (10.0, 10.0)
