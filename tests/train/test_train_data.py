"""Data sources: shapes, determinism by seed, agreement with the references they copy, the
user-file readers and their errors, the IDX reader and the missing-MNIST message, batching."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from odespec.train import DataError
from odespec.train import data as sources
from odespec.train.batches import Batches
from odespec.train.data import Need
from odespec.train.files import MNIST_FILES, fit, read_csv
from odespec.train.generators import circles, ode_demo_trajectory, ode_demo_windows, spirals
from odespec.train.idx import read_idx, write_idx


def load(name: str, options: dict, need: Need, *, seed: int = 0, base: Path = Path(".")):
    src = sources.get(name)
    return src.load(src.normalize(options), seed=seed, base_dir=base, need=need)


# -- ode_demo --------------------------------------------------------------------------------------
def test_ode_demo_truth_matches_an_independent_solver():
    y = ode_demo_trajectory(1000, 25.0)
    assert y.shape == (1000, 2) and tuple(y[0]) == (2.0, 0.0)
    a = np.array([[-0.1, 2.0], [-2.0, -0.1]])
    t = np.linspace(0, 25, 1000)
    ref = solve_ivp(lambda _t, v: (v**3) @ a, (0, 25), [2.0, 0.0], t_eval=t, method="DOP853", rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(ref.y.T - y)) < 1e-7


def test_ode_demo_windows_are_consecutive_states():
    x, y = ode_demo_windows(1000, 25.0, 10)
    truth = ode_demo_trajectory(1000, 25.0)
    assert x.shape == (990, 2) and y.shape == (990, 10, 2)  # starts from arange(1000 - 10), as torchdiffeq
    np.testing.assert_array_equal(y[:, 0], x)
    np.testing.assert_array_equal(y[123], truth[123:133])
    loaded = load("ode_demo", {}, Need((2,), (10, 2), False))
    np.testing.assert_array_equal(loaded.x, x)
    np.testing.assert_array_equal(loaded.y_eval, y)  # evaluation: every window


def test_ode_demo_window_times_are_the_models_t():
    src = sources.get("ode_demo")
    times = src.times(src.normalize(None))
    assert len(times) == 10 and times[1] == pytest.approx(25 / 999) and times[-1] == pytest.approx(9 * 25 / 999)


# -- spirals ----------------------------------------------------------------------------------------
def test_spirals_shapes_times_and_seed():
    x, ts = spirals(50, seed=1)
    assert x.shape == (50, 100, 2)
    np.testing.assert_allclose(ts, np.linspace(0, 6 * np.pi, 1000)[:100])  # latent_ode.py's samp_ts
    np.testing.assert_array_equal(spirals(50, seed=1)[0], x)
    assert not np.array_equal(spirals(50, seed=2)[0], x)


def test_noiseless_spirals_lie_on_the_two_reference_spirals():
    x, _ = spirals(20, noise_std=0.0, seed=3)
    z = np.linspace(0, 6 * np.pi, 1000)
    cc = np.stack([0.3 * z * np.cos(z) + 5, 0.3 * z * np.sin(z)], 1)
    zw = 6 * np.pi + 1 - z
    cw = np.stack([0.3 * 50 / zw * np.cos(zw) - 5, 0.3 * 50 / zw * np.sin(zw)], 1)
    for sample in x:
        hits = [np.allclose(traj[i:i + 100], sample) for traj in (cc, cw) for i in range(100, 900)]
        assert sum(hits) == 1


def test_spirals_source_separate_eval_set():
    d = load("spirals", {"count": 6, "eval_count": 3, "points": 100, "observed": 10}, Need((10, 2), (10, 2), False))
    assert d.x.shape == (6, 10, 2) and d.y is d.x and d.x_eval.shape == (3, 10, 2)
    assert sources.get("spirals").noise_std(sources.get("spirals").normalize(None)) == 0.3


# -- circles ----------------------------------------------------------------------------------------
def test_circles_radii_labels_and_seed():
    x, y = circles(400, seed=0)
    r = np.linalg.norm(x, axis=1)
    assert x.shape == (400, 2) and y.dtype == np.int64 and y.sum() == 200
    assert r[y == 0].max() <= 0.5 and r[y == 1].min() >= 1.0 and r[y == 1].max() <= 1.5
    np.testing.assert_array_equal(circles(400, seed=0)[0], x)
    assert not np.array_equal(circles(400, seed=1)[0], x)


# -- user files ----------------------------------------------------------------------------------------
def test_npz_source_reads_x_and_y_relative_to_the_spec(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.arange(12.0).reshape(6, 2), y=np.array([0, 1, 2, 0, 1, 2]))
    d = load("npz", "d.npz", Need((2,), (3,), True), base=tmp_path)
    assert d.x.shape == (6, 2) and d.y.dtype == np.int64 and d.x_eval is None
    values = load("npz", {"path": "d.npz", "eval_path": "d.npz"}, Need((1, 2), (1,), False), base=tmp_path)
    assert values.x.shape == (6, 1, 2) and values.y.shape == (6, 1) and values.y.dtype == np.float64
    assert values.x_eval is not None


def test_npz_errors_name_the_problem(tmp_path: Path):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match=r"has no array 'x' \(it has: inputs, y\)"):
        load("npz", "d.npz", Need((2,), (1,), False), base=tmp_path)
    with pytest.raises(DataError, match=r"(?s)'missing.npz' not found.*relative to the spec"):
        load("npz", "missing.npz", Need((2,), (1,), False), base=tmp_path)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickle"):
        load("npy", {"x": "o.npy", "y": "o.npy"}, Need((2,), (1,), False), base=tmp_path)


def test_fit_checks_shapes_and_labels():
    need = Need((2,), (3,), True)
    with pytest.raises(DataError, match=r"3 input values .* takes 2"):
        fit(np.zeros((4, 3)), np.zeros(4), need, "d")
    with pytest.raises(DataError, match=r"label 3 is outside 0..2"):
        fit(np.zeros((2, 2)), np.array([0, 3]), need, "d")
    with pytest.raises(DataError, match="whole numbers"):
        fit(np.zeros((2, 2)), np.array([0.5, 1.0]), need, "d")
    with pytest.raises(DataError, match="one row per sample"):
        fit(np.zeros((2, 2)), np.zeros(3), need, "d")
    with pytest.raises(DataError, match=r"a target has 2 values .* has 3"):
        fit(np.zeros((2, 2)), np.zeros((2, 2)), Need((2,), (3,), False), "d")


def test_npy_pair(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.ones((5, 4), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.zeros((5, 2)))
    d = load("npy", {"x": "x.npy", "y": "y.npy"}, Need((2, 2), (2,), False), base=tmp_path)
    assert d.x.shape == (5, 2, 2) and d.y.shape == (5, 2)


def test_csv_with_header_and_named_target(tmp_path: Path):
    (tmp_path / "d.csv").write_text("a,label,b\n1,0,2\n3,1,4\n5,1,6\n")
    x, y = read_csv(tmp_path / "d.csv", "label")
    np.testing.assert_array_equal(x, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(y, [0, 1, 1])
    d = load("csv", {"path": "d.csv", "target": "label"}, Need((2,), (2,), True), base=tmp_path)
    assert d.y.tolist() == [0, 1, 1]


def test_csv_without_header_takes_the_last_column(tmp_path: Path):
    (tmp_path / "d.csv").write_text("1,2,0.5\n3,4,1.5\n")
    d = load("csv", "d.csv", Need((2,), (1,), False), base=tmp_path)
    np.testing.assert_array_equal(d.y, [[0.5], [1.5]])
    (tmp_path / "bad.csv").write_text("x,y\n1,oops\n")
    with pytest.raises(DataError, match="every cell must be a number"):
        load("csv", "bad.csv", Need((1,), (1,), False), base=tmp_path)
    with pytest.raises(DataError, match=r"no column named 'z' \(its columns: x, y\)"):
        load("csv", {"path": "bad.csv", "target": "z"}, Need((1,), (1,), False), base=tmp_path)


# -- IDX and MNIST -------------------------------------------------------------------------------------
def _mnist_dir(tmp_path: Path, *, gz: bool, train: int = 12, test: int = 6) -> Path:
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    d.mkdir()
    ext = ".gz" if gz else ""
    write_idx(d / (MNIST_FILES[0] + ext), rng.integers(0, 256, (train, 28, 28), dtype=np.uint8))
    write_idx(d / (MNIST_FILES[1] + ext), rng.integers(0, 10, train, dtype=np.uint8))
    write_idx(d / (MNIST_FILES[2] + ext), rng.integers(0, 256, (test, 28, 28), dtype=np.uint8))
    write_idx(d / (MNIST_FILES[3] + ext), rng.integers(0, 10, test, dtype=np.uint8))
    return d


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    p = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(p, a)
    back = read_idx(p)
    np.testing.assert_array_equal(back, a)
    assert back.dtype == np.int32


def test_idx_header_is_the_mnist_one(tmp_path: Path):
    write_idx(tmp_path / "l", np.array([3, 1, 4], dtype=np.uint8))
    # magic 0x00000801 (unsigned bytes, 1 dimension), then the count, then the labels
    assert (tmp_path / "l").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_idx_errors(tmp_path: Path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(DataError, match="truncated: its header promises 5 bytes of data, it has 2"):
        read_idx(tmp_path / "short")
    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "x.gz")
    # a gzip bomb is read no further than its header promises
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2]) + bytes(50_000_000)))
    assert read_idx(tmp_path / "bomb.gz").shape == (2,)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_local_idx_files(tmp_path: Path, gz: bool):
    d = _mnist_dir(tmp_path, gz=gz)
    data = load("mnist", "mnist", Need((1, 28, 28), (10,), True), base=tmp_path)
    assert data.x.shape == (12, 1, 28, 28) and data.x.dtype == np.uint8 and data.x_scale == pytest.approx(1 / 255)
    assert data.y.shape == (12,) and data.x_eval.shape == (6, 1, 28, 28)
    np.testing.assert_array_equal(data.x[:, 0], read_idx(d / (MNIST_FILES[0] + (".gz" if gz else ""))))


def test_missing_mnist_names_every_expected_file(tmp_path: Path):
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / MNIST_FILES[1], np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError) as e:
        load("mnist", "mnist", Need((1, 28, 28), (10,), True), base=tmp_path)
    text = str(e.value)
    for name in (MNIST_FILES[0], MNIST_FILES[2], MNIST_FILES[3]):
        assert name + "[.gz]" in text
    assert "MNIST files missing in" in text and "never downloads" in text
    assert MNIST_FILES[1] + "[.gz]" not in text


# -- batching ----------------------------------------------------------------------------------------
def _batches(n: int, b: int, seed: int = 0) -> Batches:
    import torch

    from odespec.train.data import LoadedData

    x = np.arange(n, dtype=np.float64)[:, None]
    return Batches(LoadedData(x, x), b, seed=seed, device=torch.device("cpu"), dtype=torch.float64, labels=False)


def test_each_epoch_visits_every_sample_once_and_batches_never_run_short():
    b = _batches(10, 4)
    stream = np.concatenate([b.indices(k) for k in range(5)])  # 20 samples = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # a new order every epoch
    assert b.cursor(5) == {"samples_seen": 20, "epoch": 2, "position": 0}
    assert b.steps_for_epochs(3) == math.ceil(30 / 4)


def test_batches_are_a_function_of_the_step_and_the_seed():
    a, b = _batches(10, 4), _batches(10, 4)
    for k in (7, 0, 3):  # any order: no hidden cursor
        np.testing.assert_array_equal(a.indices(k), b.indices(k))
    assert not np.array_equal(_batches(10, 4, seed=1).indices(0), a.indices(0))


def test_batch_larger_than_the_data_is_an_error():
    with pytest.raises(DataError, match="batch_size 8 is larger than the 5 training samples"):
        _batches(5, 8)


# -- MNIST random crops ----------------------------------------------------------------------------
def _crop_reference(image: np.ndarray, top: int, left: int, padding: int) -> np.ndarray:
    """torchvision's RandomCrop(size, padding) by hand: zero-pad, then cut at (top, left)."""
    h, w = image.shape[-2:]
    padded = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(padding, padding)] * 2)
    return padded[..., top:top + h, left:left + w]


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved down by dy and right by dx pixels (negative: up, left), zeros shifted in."""
    out = np.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_random_crop_is_a_shifted_copy_with_zero_fill():
    import torch

    from odespec.train.augment import RandomCrop

    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.0, (64, 3, 10, 12))  # no zero pixel: the fill shows
    crop = RandomCrop(4)
    params = crop.draw(64, np.random.default_rng(1))
    assert params.shape == (64, 2) and params.min() >= 0 and params.max() <= 8
    assert len({tuple(p) for p in params}) > 20  # offsets vary per sample
    out = crop.apply(torch.from_numpy(x), torch.from_numpy(params)).numpy()
    assert out.shape == x.shape
    for i, (top, left) in enumerate(params):
        np.testing.assert_array_equal(out[i], _crop_reference(x[i], top, left, 4))
        np.testing.assert_array_equal(out[i], _shift(x[i], 4 - top, 4 - left))
    zero = params[:, 0] == 0  # crop starts in the padding: the image moved down, zeros on top
    assert zero.any() and (out[zero][..., :4, :] == 0).all()


def test_random_crop_with_padding_zero_changes_nothing():
    import torch

    from odespec.train.augment import RandomCrop

    x = torch.rand(5, 1, 28, 28)
    crop = RandomCrop(0)
    params = crop.draw(5, np.random.default_rng(0))
    assert (params == 0).all()
    assert torch.equal(crop.apply(x, torch.from_numpy(params)), x)
    with pytest.raises(ValueError):
        RandomCrop(-1)


def _mnist_batches(tmp_path: Path, options: dict, *, seed: int = 0, batch: int = 8):
    import torch

    data = load("mnist", {"dir": "mnist", **options}, Need((1, 28, 28), (10,), True), base=tmp_path)
    return data, Batches(data, batch, seed=seed, device=torch.device("cpu"), dtype=torch.float32, labels=True)


def test_mnist_random_crop_applies_to_training_batches_only(tmp_path: Path):
    import torch

    _mnist_dir(tmp_path, gz=False, train=20, test=6)
    data, cropped = _mnist_batches(tmp_path, {"random_crop": {"padding": 4}})
    _, plain = _mnist_batches(tmp_path, {})
    assert data.augment is not None and data.augment.padding == 4
    changed = 0
    for step in range(4):
        x, y = cropped.batch(step)[:2]
        x0, y0 = plain.batch(step)[:2]
        assert x.shape == x0.shape == (8, 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(y, y0)  # same samples, same order: only the pixels move
        for a, b in zip(x.numpy(), x0.numpy()):
            # one of the 81 shifts by -4..4 pixels, zeros shifted in
            assert any(np.array_equal(a, _shift(b, dy, dx)) for dy in range(-4, 5) for dx in range(-4, 5))
            changed += not np.array_equal(a, b)
    assert changed > 16  # offsets (4, 4) leave an image where it was: 1 in 81
    # evaluation data are never cropped
    for (xe, ye, *_), (xe0, ye0, *_) in zip(cropped.eval_chunks(), plain.eval_chunks()):
        assert torch.equal(xe, xe0) and torch.equal(ye, ye0)
    np.testing.assert_allclose(next(cropped.eval_chunks())[0].numpy(), data.x_eval / 255, rtol=1e-6)
    # with eval: false the training images are the evaluation set, uncropped too
    _, no_eval = _mnist_batches(tmp_path, {"random_crop": {"padding": 4}, "eval": False})
    np.testing.assert_allclose(next(no_eval.eval_chunks())[0].numpy(), data.x / 255, rtol=1e-6)


def _shifts(cropped: Batches, plain: Batches, step: int) -> list[tuple[int, int]]:
    """How far each image of step's batch was moved: the (dy, dx) that makes the plain image the
    cropped one."""
    x, x0 = cropped.batch(step)[0].numpy(), plain.batch(step)[0].numpy()
    return [next((dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if np.array_equal(a, _shift(b, dy, dx)))
            for a, b in zip(x, x0)]


def test_mnist_random_crop_is_a_function_of_seed_and_step(tmp_path: Path):
    import torch

    _mnist_dir(tmp_path, gz=True, train=20, test=6)
    _, a = _mnist_batches(tmp_path, {"random_crop": {"padding": 4}})
    _, b = _mnist_batches(tmp_path, {"random_crop": {"padding": 4}})
    for step in (5, 0, 3):  # any order: no hidden state, as after a resume
        assert torch.equal(a.batch(step)[0], b.batch(step)[0])
    # a data-parallel share is those rows of the same cropped batch
    assert torch.equal(a.batch(2, (2, 6))[0], a.batch(2)[0][2:6])
    _, plain = _mnist_batches(tmp_path, {})
    assert _shifts(a, plain, 0) != _shifts(a, plain, 1)  # new offsets every step
    _, a1 = _mnist_batches(tmp_path, {"random_crop": {"padding": 4}}, seed=1)
    _, plain1 = _mnist_batches(tmp_path, {}, seed=1)
    assert _shifts(a1, plain1, 0) != _shifts(a, plain, 0)  # and for another seed


def test_mnist_random_crop_padding_zero_or_absent_leaves_images_unchanged(tmp_path: Path):
    import torch

    _mnist_dir(tmp_path, gz=False, train=20, test=6)
    data0, zero = _mnist_batches(tmp_path, {"random_crop": {"padding": 0}})
    data, plain = _mnist_batches(tmp_path, {})
    assert data0.augment is None and data.augment is None
    x = plain.batch(1).x
    assert torch.equal(zero.batch(1)[0], x)
    np.testing.assert_allclose(x.numpy(), data.x[plain.indices(1)] / 255, rtol=1e-6)


# -- digits (shipped) -------------------------------------------------------------------------------
def test_digits_are_shipped_with_the_package_and_read_without_sklearn():
    from odespec.train.digits import digits

    x, y = digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.uint8 and x.max() == 16
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # sklearn's load_digits()[0]: a zero (pixel rows of the first image)
    assert y[0] == 0 and x[0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0]


def test_digits_package_data_is_declared_for_the_wheel():
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["odespec"]
    assert "data/*.npz" in data and (root / "odespec" / "data" / "digits.npz").is_file()


def test_digits_split_is_stratified_disjoint_and_seeded():
    from odespec.train.digits import digits, digits_split

    _, y = digits()
    train, held = digits_split(y, 0.2, 0)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == 1797
    counts = np.bincount(y[held], minlength=10)
    assert np.all(np.abs(counts - 0.2 * np.bincount(y)) <= 0.5)
    np.testing.assert_array_equal(digits_split(y, 0.2, 0)[1], held)
    assert not np.array_equal(digits_split(y, 0.2, 1)[1], held)


@pytest.mark.parametrize(("shape", "want"), [("image", (1, 8, 8)), ("flat", (64,))])
def test_digits_source_shapes_scale_and_split(shape, want):
    src = sources.get("digits")
    opts = src.normalize({"shape": shape})
    assert src.shapes(opts).input == want and src.shapes(opts).classes == 10
    d = load("digits", {"shape": shape}, Need(want, (10,), True), seed=5)
    assert d.x.shape[1:] == want and d.x_eval is not None and len(d.x) + len(d.x_eval) == 1797
    assert d.x_scale == 1 / 16 and set(np.unique(d.y_eval)) == set(range(10))
    # the split is the data source's (split_seed), not the run's seed: runs compare on the same images
    again = load("digits", {"shape": shape}, Need(want, (10,), True), seed=6)
    np.testing.assert_array_equal(again.x_eval, d.x_eval)
    whole = load("digits", {"shape": shape, "eval_fraction": 0}, Need(want, (10,), True))
    assert len(whole.x) == 1797 and whole.x_eval is None
