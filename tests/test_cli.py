"""Testing for the deepclust command line (deepclust.cli).

Most tests run the real ``deepclust`` command in a subprocess (``python -m
deepclust``), as users do, and check its files, standard output, standard error
and exit status.
"""

import csv
import errno
import io
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from PIL import Image

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust._inputs import SkippedInputsWarning, image_files_in
from deepclust.cli import FIT_DEFAULTS, main
from deepclust.datasets import make_shape_images
from deepclust.persistence import load

onnx = pytest.importorskip("deepclust.onnx")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Positions (in sorted file order) of the unreadable files of the test folder:
# first, in the middle, in a subfolder and last.
N_FILES = 16
UNREADABLE = {
    0: "aa_first.png",
    6: "f05_middle.png",
    9: "f09/inner.png",
    15: "zz_last.png",
}


def run(*args, cwd, check=True):
    """Run ``deepclust ARGS`` in a subprocess; return the CompletedProcess."""
    result = subprocess.run(
        [sys.executable, "-m", "deepclust", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_csv(text):
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder of 12 readable 8x8 PNGs and 4 unreadable files, in a work dir."""
    root = tmp_path_factory.mktemp("cli")
    folder = root / "images"
    images, _ = make_shape_images(
        N_FILES - len(UNREADABLE), image_size=8, n_classes=3, random_state=0
    )
    readable = iter(images)
    for position in range(N_FILES):
        name = UNREADABLE.get(position, f"f{position:02d}.png")
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if position in UNREADABLE:
            path.write_bytes(b"this is not an image")
        else:
            Image.fromarray(next(readable)).save(path)
    files = image_files_in(folder)
    assert [Path(files[p]).relative_to(folder).as_posix() for p in UNREADABLE] == list(
        UNREADABLE.values()
    )
    return root


@pytest.fixture(scope="module")
def fitted(workdir):
    """'deepclust fit' with --on-error skip (safetensors), then 'deepclust export'."""
    fit = run(
        "fit",
        "images",
        "--n-clusters",
        "3",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--on-error",
        "skip",
        "-o",
        "cdc-model",
        cwd=workdir,
    )
    run("export", "cdc-model", "cdc.onnx", cwd=workdir)
    return fit


def test_fit_saves_pickle_free_model(workdir, fitted):
    # Check that 'deepclust fit' saves the safetensors folder by default, reports
    # the unreadable files on stderr, and records one label per file.
    assert "saved CDCClusterer to cdc-model (safetensors" in fitted.stdout
    assert "cluster sizes: [" in fitted.stdout
    assert "4 unreadable file(s) were left out of training" in fitted.stderr
    assert "Traceback" not in fitted.stderr
    model = load(workdir / "cdc-model")
    files = image_files_in(workdir / "images")
    assert model.input_files_ == [
        str(Path("images") / Path(f).relative_to(workdir / "images")) for f in files
    ]
    assert model.labels_.shape == (N_FILES,)
    assert (model.labels_[list(UNREADABLE)] == -1).all()
    np.testing.assert_array_equal(model.skipped_indices_, sorted(UNREADABLE))
    assert model.n_epochs_ == 1 and model.batch_size == 8


@pytest.mark.parametrize("model_path", ["cdc.onnx", "cdc-model"])
def test_predict_one_row_per_file(workdir, fitted, model_path):
    # Check that 'deepclust predict' (ONNX file or saved model) writes one row per
    # file in sorted order, relative to the folder; that each readable file's row
    # equals predicting that file alone; and that unreadable files get a status
    # and an error instead of a label.
    result = run(
        "predict",
        model_path,
        "images",
        "--on-error",
        "skip",
        "--csv",
        "out.csv",
        cwd=workdir,
    )
    header, rows = read_csv((workdir / "out.csv").read_text())
    assert header == [
        "file",
        "status",
        "label",
        "probability",
        "proba_0",
        "proba_1",
        "proba_2",
        "error",
    ]
    files = image_files_in(workdir / "images")
    assert [row[0] for row in rows] == [
        Path(f).relative_to(workdir / "images").as_posix() for f in files
    ]
    single = onnx.OnnxClusterer(workdir / "cdc.onnx")
    sizes = np.zeros(3, dtype=int)
    for position, (row, path) in enumerate(zip(rows, files, strict=True)):
        if position in UNREADABLE:
            assert row[1] == "unreadable" and row[2:7] == [""] * 5
            assert "UnidentifiedImageError" in row[7]
            continue
        alone = single.predict_proba([path])[0]
        assert row[1] == "ok" and row[7] == ""
        assert int(row[2]) == int(alone.argmax())
        np.testing.assert_allclose([float(v) for v in row[4:7]], alone, atol=1e-4)
        assert float(row[3]) == pytest.approx(alone.max(), abs=1e-4)
        sizes[int(row[2])] += 1
    assert f"{N_FILES} input(s): {N_FILES - 4} predicted, 4 unreadable" in result.stderr
    assert "cluster sizes: " + ", ".join(f"{k}: {n}" for k, n in enumerate(sizes)) in (
        result.stderr
    )


def test_predict_refuses_unreadable_files_by_default(workdir, fitted):
    # Check that without --on-error skip an unreadable file stops predict with
    # one line that names the file and the flag.
    result = run("predict", "cdc.onnx", "images", cwd=workdir, check=False)
    assert result.returncode == 1
    assert result.stdout.count("\n") <= 1  # at most the CSV header
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "aa_first.png" in lines[0] and "--on-error skip" in lines[0]


def test_joblib_format_and_cd_model(workdir, fitted):
    # Check 'fit --format joblib' for a CD model and 'predict' of its head
    # activations on stdout, one column per head, for a single image file.
    run(
        "fit",
        "images",
        "--model",
        "cd",
        "--epochs",
        "1",
        "--on-error",
        "skip",
        "--param",
        "n_heads=5",
        "--param",
        "backbone=mlp",
        "--image-size",
        "6",
        "-o",
        "cd.joblib",
        "--quiet",
        cwd=workdir,
    )
    estimator = joblib.load(workdir / "cd.joblib")
    assert isinstance(estimator, ContrastiveDisentangler)
    assert estimator.n_heads == 5 and estimator.image_size_ == (6, 6)
    image = str(Path("images") / "f01.png")
    refused = run("predict", "cd.joblib", image, cwd=workdir, check=False)
    assert refused.returncode == 1 and "--allow-pickle" in refused.stderr
    result = run(
        "predict", "cd.joblib", image, "--decimals", "3", "--allow-pickle", cwd=workdir
    )
    header, rows = read_csv(result.stdout)
    assert header == ["file", "status", *[f"head_{i}" for i in range(5)], "error"]
    assert [row[:2] for row in rows] == [[image, "ok"]]
    expected = estimator.transform([str(workdir / image)])[0]
    np.testing.assert_allclose([float(v) for v in rows[0][2:7]], expected, atol=1e-3)
    assert all(len(v.split(".")[1]) == 3 for v in rows[0][2:7])


def test_predict_npy_rows(workdir, fitted, tmp_path):
    # Check that a .npy input gives one row per array row, named by index.
    images, _ = make_shape_images(5, image_size=8, random_state=3)
    np.save(tmp_path / "batch.npy", images)
    result = run("predict", "cdc.onnx", tmp_path / "batch.npy", "--quiet", cwd=workdir)
    _, rows = read_csv(result.stdout)
    assert [row[0] for row in rows] == [f"batch.npy[{i}]" for i in range(5)]
    expected = onnx.OnnxClusterer(workdir / "cdc.onnx").predict(images)
    assert [int(row[2]) for row in rows] == expected.tolist()
    assert result.stderr == ""


@pytest.mark.parametrize(
    "args, expected",
    [
        (["fit", "missing_folder"], "DATA 'missing_folder' does not exist"),
        (["fit", "empty"], "DATA 'empty' is a folder with no image files"),
        (
            ["fit", "images", "--model", "cd", "--n-clusters", "3"],
            "--n-clusters applies to --model cdc only",
        ),
        (
            ["fit", "images", "--param", "batch_siz=4"],
            "--param batch_siz: CDCClusterer has no parameter 'batch_siz'; did you "
            "mean "
            "batch_size",
        ),
        (
            ["fit", "images", "--param", "noequals"],
            "--param 'noequals': expected NAME=VALUE",
        ),
        (
            ["fit", "images", "-o", "notes.txt", "--format", "safetensors"],
            "--output 'notes.txt' is an existing file",
        ),
        (
            ["fit", "images", "--epochs", "1"],
            "DATA has 4 image file(s) that cannot be decoded",
        ),
        (
            ["predict", "missing_model", "images"],
            "MODEL 'missing_model' does not exist",
        ),
        (
            ["predict", "notes.txt", "images"],
            "MODEL 'notes.txt' is not a deepclust model",
        ),
        (
            ["predict", "junk.onnx", "images"],
            "'junk.onnx' could not be loaded as an ONNX",
        ),
        (
            ["predict", "fake.onnx", "images"],
            "MODEL 'fake.onnx' is not a deepclust model: its content is neither",
        ),
        (["predict", "cdc-model", "notes.txt"], "DATA 'notes.txt' is neither a folder"),
        (
            ["predict", "cdc.onnx", "images", "--csv", "no/such/out.csv"],
            "--csv 'no/such/out.csv': the folder",
        ),
        (
            ["export", "cdc.onnx", "again.onnx"],
            "MODEL 'cdc.onnx' is already an ONNX file",
        ),
        (["export", "missing_model", "m.onnx"], "MODEL 'missing_model' does not exist"),
    ],
    ids=[
        "fit-missing-path",
        "fit-empty-folder",
        "cd-with-n-clusters",
        "unknown-param",
        "param-without-value",
        "output-is-a-file",
        "unreadable-without-skip",
        "missing-model",
        "not-a-model",
        "invalid-onnx",
        "onnx-name-only",
        "data-not-images",
        "csv-missing-folder",
        "export-onnx",
        "export-missing-model",
    ],
)
def test_user_mistakes_give_one_line(workdir, fitted, args, expected):
    # Check that each user mistake prints one line naming the flag or path, exits
    # with status 1 and shows no traceback.
    (workdir / "empty").mkdir(exist_ok=True)
    (workdir / "notes.txt").write_text("not a model")
    # Starts like an ONNX model (field 1, ir_version) but is not one.
    (workdir / "junk.onnx").write_bytes(b"\x08\x09not an onnx file")
    (workdir / "fake.onnx").write_bytes(b"\x00not an onnx file")
    result = run(*args, cwd=workdir, check=False)
    assert result.returncode == 1
    lines = [
        line
        for line in result.stderr.splitlines()
        if not line.startswith("deepclust: warning:")
    ]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"deepclust {args[0]}: error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["fit", "images", "--on-error", "ignore"],
            "argument --on-error: invalid choice",
        ),
        (
            ["fit", "images", "--batch-size", "0"],
            "argument --batch-size: expected a positive integer",
        ),
        (
            ["fit", "images", "--epochs", "many"],
            "argument --epochs: expected 'auto' or",
        ),
        (["predict", "cdc.onnx"], "the following arguments are required: DATA"),
        (["cluster"], "argument COMMAND: invalid choice"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_give_one_line_without_torch(workdir, args, expected):
    # Check that usage errors exit with status 2 on one line, before torch loads.
    code = (
        "import sys\nfrom deepclust.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as exit:\n"
        "    print('torch' in sys.modules, exit.code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["False", "2"]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def _help_in_fresh_process(*argvs):
    """What main(argv) prints for each argv, and whether that imported torch."""
    code = (
        "import sys, contextlib, io\nfrom deepclust.cli import main\n"
        f"for argv in {list(argvs)!r}:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n            main(argv)\n"
        "        except SystemExit:\n            pass\n"
        "    sys.stderr.write(out.getvalue())\n"
        "print('torch' in sys.modules)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )


def test_help_and_version_do_not_import_torch():
    # Check that --help of every command shows defaults and that neither --help
    # nor --version imports torch.
    result = _help_in_fresh_process(
        ["--help"],
        ["fit", "--help"],
        ["predict", "--help"],
        ["export", "--help"],
        ["demo", "--help"],
        ["--version"],
    )
    assert result.stdout.strip() == "False"
    assert "deepclust 0." in result.stderr
    assert "(default: 128)" in result.stderr  # fit --batch-size
    assert "(default: raise)" in result.stderr  # --on-error


def test_every_option_has_help():
    # Check that every option of every command has help text.
    from deepclust.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_debug_shows_traceback(workdir):
    # Check that --debug lets the exception through with its traceback.
    result = run("fit", "missing_folder", "--debug", cwd=workdir, check=False)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "CommandError" in result.stderr


def test_fit_defaults_match_estimators():
    # Check that the defaults shown by 'deepclust fit --help' are the estimators'.
    for estimator in (CDCClusterer(), ContrastiveDisentangler()):
        params = estimator.get_params()
        for name, value in FIT_DEFAULTS.items():
            if name in params:
                assert params[name] == value, name


@pytest.mark.slow
def test_demo_prints_score_table(capsys):
    # Check that 'deepclust demo' trains CDC on the digits and prints ACC, NMI and
    # ARI for KMeans and CDC.
    assert main(["demo", "--model", "cdc", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert header.split()[:4] == ["method", "ACC", "NMI", "ARI"]
    for name in ["KMeans on pixels", "CDCClusterer"]:
        row = next(line for line in lines if line.startswith(name))
        scores = [float(value) for value in row[len(name) :].split()[:3]]
        assert all(-1.0 <= score <= 1.0 for score in scores)
    assert "CD heads" not in out.split("One run is one draw")[0]
    assert "Over 20 draws with the defaults" in out


def test_demo_trains_cdc_alone_by_default(capsys, monkeypatch):
    # Check that a plain 'deepclust demo' trains the flagship only (under a minute
    # on 2 cores) and prints the recorded spread of both estimators.
    import deepclust.cli as cli

    trained = []

    def fake_fit(model, epochs, seed, verbose, threads):
        trained.append(model)
        return "CDCClusterer", {"acc": 0.9, "nmi": 0.9, "ari": 0.9}, 1.0

    monkeypatch.setattr(cli, "_demo_fit", fake_fit)
    assert main(["demo", "--quiet"]) == 0
    assert trained == ["cdc"]
    out = capsys.readouterr().out
    for name, (low, mean, high) in cli.DEMO_DRAWS.items():
        assert f"{name} {low:.3f} to {high:.3f} (mean {mean:.3f})" in out


@pytest.mark.slow
def test_demo_trains_both_models_at_once_with_the_same_results(capsys):
    # Check that --jobs 2 trains CD and CDC in two worker processes and that each
    # row matches the same training run in this process (same threads).
    import torch

    from deepclust.cli import _demo_fit

    assert (
        main(
            [
                "demo",
                "--model",
                "both",
                "--epochs",
                "1",
                "--jobs",
                "2",
                "--threads",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2 processes of 1 thread(s)" in out
    rows = {
        line[:20].strip(): [float(value) for value in line[20:].split()[:3]]
        for line in out.splitlines()
        if line.startswith(("CD heads + KMeans", "CDCClusterer"))
    }
    threads = torch.get_num_threads()
    try:
        for model in ("cd", "cdc"):
            name, scores, _ = _demo_fit(model, 1, 0, 0, 1)
            expected = [round(scores[key], 3) for key in ("acc", "nmi", "ari")]
            assert rows[name] == pytest.approx(expected, abs=1e-9), name
    finally:
        torch.set_num_threads(threads)


def test_in_process_predict_warns_nothing_unexpected(workdir, fitted, capsys):
    # Check that main() returns 0 in process and that the skipped files are
    # reported in the CSV rather than as stray warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedInputsWarning)
        code = main(
            [
                "predict",
                str(workdir / "cdc.onnx"),
                str(workdir / "images"),
                "--on-error",
                "skip",
                "--quiet",
            ]
        )
    assert code == 0
    _, rows = read_csv(capsys.readouterr().out)
    assert sum(row[1] == "unreadable" for row in rows) == len(UNREADABLE)


# ---------------------------------------------------------------------------
# select-k, report and fit --report
# ---------------------------------------------------------------------------


def test_select_k_and_report_help_do_not_import_torch():
    # Check that --help of the new commands shows their defaults without
    # importing torch.
    result = _help_in_fresh_process(["select-k", "--help"], ["report", "--help"])
    assert result.stdout.strip() == "False"
    assert "best k: N" in result.stderr
    assert "--k-max K" in result.stderr and "(default: 15)" in result.stderr
    assert "(default: report.html)" in result.stderr


def run_in_process(*args, cwd, monkeypatch, capsys):
    """Run ``deepclust ARGS`` in this process (torch already loaded): (out, err)."""
    monkeypatch.chdir(cwd)
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_select_k_on_precomputed_features(tmp_path, monkeypatch, capsys):
    # Check one row per k, the reasoning and a last line 'best k: 4' for four
    # blobs given as features.
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=300, centers=4, n_features=5, random_state=0)
    np.save(tmp_path / "features.npy", X)
    out, _ = run_in_process(
        "select-k", "features.npy", "--features", "precomputed", "--k-max", "7",
        "--resamples", "4", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[-1] == "best k: 4"
    rows = [line.split() for line in lines if re.match(r"^\s+\d+\s+[-\d.]+\s", line)]
    assert [int(row[0]) for row in rows] == list(range(2, 8))
    assert any(line.startswith("decision: ") for line in lines)


def test_select_k_trains_once_on_images(workdir, fitted, monkeypatch, capsys):
    # Check that select-k trains a ContrastiveDisentangler on the folder (the
    # unreadable files skipped), prints the table, saves the stability plot and
    # ends with 'best k: N'.
    pytest.importorskip("matplotlib")
    out, _ = run_in_process(
        "select-k", "images", "--on-error", "skip", "--epochs", "1",
        "--param", "n_heads=4", "--param", "batch_size=8", "--k-max", "4",
        "--resamples", "3", "--plot", "k.png", "--quiet",
        cwd=workdir, monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    lines = out.splitlines()
    assert re.fullmatch(r"best k: [234]", lines[-1]), out
    assert "ContrastiveDisentangler (1 epochs), trained once" in out
    assert f"samples clustered: {N_FILES - len(UNREADABLE)} of {N_FILES}" in out
    with Image.open(workdir / "k.png") as image:
        assert image.size[0] > 100


def test_report_of_a_saved_model(workdir, fitted, monkeypatch, capsys):
    # Check that 'deepclust report' writes one section per cluster, inlined
    # images only, and counts the unreadable files.
    pytest.importorskip("matplotlib")
    out, _ = run_in_process(
        "report", "cdc-model", "images", "-o", "cdc-report.html",
        cwd=workdir, monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert out.startswith("wrote cdc-report.html (")
    text = (workdir / "cdc-report.html").read_text(encoding="utf-8")
    assert text.count('<section class="cluster"') == 3
    sources = re.findall(r'<img src="([^"]{0,22})', text)
    assert sources and set(sources) == {"data:image/png;base64,"}
    assert len(sources) == text.count("<img ")
    assert "unreadable inputs" in text and "aa_first.png" in text


def test_fit_with_report(workdir, fitted, monkeypatch, capsys):
    # Check that 'fit --report' writes the report of the new model at the end,
    # with the head galleries of a CD model.
    pytest.importorskip("matplotlib")
    out, _ = run_in_process(
        "fit", "images", "--model", "cd", "--epochs", "1", "--on-error", "skip",
        "--param", "n_heads=4", "--param", "batch_size=8", "-o", "cd-model",
        "--report", "cd-report.html", "--quiet",
        cwd=workdir, monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert "wrote the report cd-report.html" in out
    text = (workdir / "cd-report.html").read_text(encoding="utf-8")
    assert '<h2 id="heads">' in text and '<section class="cluster"' in text
    assert "fit wall time" in text


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["select-k", "images", "--k-min", "5", "--k-max", "3"],
            "--k-max 3 is smaller than --k-min 5",
        ),
        (
            ["select-k", "images", "--features", "precomputed"],
            "--features precomputed needs DATA to be a .npy array",
        ),
        (["select-k", "missing_folder"], "DATA 'missing_folder' does not exist"),
        (["report", "cdc.onnx", "images"], "MODEL 'cdc.onnx' is an ONNX file"),
        (
            ["report", "cdc-model", "images", "--n-clusters", "4"],
            "--n-clusters applies to ContrastiveDisentangler models only",
        ),
        (
            ["report", "cdc-model", "images", "-o", "no/such/r.html"],
            "--output 'no/such/r.html': the folder",
        ),
        (
            ["report", "cdc-model", "images", "--labels", "nolabels.npy"],
            "--labels 'nolabels.npy' does not exist",
        ),
        (["fit", "images", "--report", "images"], "--report 'images' is a folder"),
    ],
    ids=[
        "k-max-below-k-min",
        "precomputed-folder",
        "select-k-missing-data",
        "report-onnx",
        "report-n-clusters-cdc",
        "report-missing-folder",
        "report-missing-labels",
        "fit-report-folder",
    ],
)
def test_select_k_and_report_mistakes_give_one_line(
    workdir, fitted, args, expected, monkeypatch, capsys
):
    # Check that each mistake gives one line naming the flag or path, status 1.
    monkeypatch.chdir(workdir)
    assert main(args) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"deepclust {args[0]}: error: ")
    assert expected in lines[0], lines[0]


def test_select_k_usage_error(capsys):
    # Check that a k below 2 is a usage error (status 2) on one line.
    with pytest.raises(SystemExit) as exit_info:
        main(["select-k", "images", "--k-min", "1"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "argument --k-min: expected an integer >= 2, got '1'" in lines[0]


# ---------------------------------------------------------------------------
# Nothing run: pickles are loaded only with --allow-pickle
# ---------------------------------------------------------------------------


class _Payload:
    """An object whose unpickling creates the file ``marker`` (runs code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _plant_pickles(folder, marker):
    """Pickles that would create ``marker``, raw and compressed, named as models."""
    payload = _Payload(marker)
    planted = []
    for name, protocol in [
        ("model.safetensors", 5),
        ("model", 4),
        ("weights.bin", 3),
        ("x.onnx", 2),
        ("x.joblib", 5),
    ]:
        (folder / name).write_bytes(pickle.dumps(payload, protocol=protocol))
        planted.append(folder / name)
    for method in ["zlib", "gzip", "bz2", "xz", "lzma"]:
        path = folder / f"{method}.safetensors"
        joblib.dump(payload, path, compress=(method, 3))
        planted.append(path)
    return planted


def test_pickles_are_never_loaded_without_allow_pickle(
    workdir, tmp_path, monkeypatch, capsys
):
    # Check that a pickle given as MODEL is told by its content, whatever its
    # name, and refused on one line that names --allow-pickle: the code it holds
    # never runs. --allow-pickle is the one way to unpickle it.
    marker = tmp_path / "code-ran"
    monkeypatch.chdir(workdir)
    for path in _plant_pickles(tmp_path, marker):
        for args in [
            ["predict", path, "images"],
            ["export", path, tmp_path / "m.onnx"],
            ["report", path, "images", "-o", tmp_path / "r.html"],
            ["select-k", "images", "--from-model", path],
        ]:
            assert main([str(arg) for arg in args]) == 1
            assert not marker.exists(), (path.name, args[0])
            lines = capsys.readouterr().err.splitlines()
            assert len(lines) == 1, lines
            flag = "--from-model" if args[0] == "select-k" else "MODEL"
            assert f"{flag} {str(path)!r} is a joblib (pickle) file" in lines[0]
            assert "pass --allow-pickle to load it if you trust the file" in lines[0]
    assert main(["predict", str(tmp_path / "model"), "images", "--allow-pickle"]) == 1
    assert "not a deepclust model" in capsys.readouterr().err
    assert marker.exists()


def test_allow_pickle_has_help_saying_why():
    # Check that the help of --allow-pickle says that unpickling runs code.
    result = _help_in_fresh_process(["predict", "--help"], ["export", "--help"])
    assert result.stdout.strip() == "False"
    help_text = " ".join(result.stderr.split())
    assert help_text.count("--allow-pickle also load MODEL when it is a joblib") == 2
    assert "unpickling runs code from the file, so only for files you trust" in (
        help_text
    )


# ---------------------------------------------------------------------------
# Nothing lost: outputs are replaced only when a run succeeds
# ---------------------------------------------------------------------------

_OLD_CSV = b"file,status\r\n" + b"".join(b"old%d.png,ok\r\n" % i for i in range(100))


def _copy_readable_images(workdir, folder, n=5):
    folder.mkdir()
    for i in range(1, n + 1):
        (folder / f"f{i:02d}.png").write_bytes(
            (workdir / "images" / f"f{i:02d}.png").read_bytes()
        )
    return folder


def test_failed_predict_keeps_the_previous_csv(workdir, fitted, tmp_path, capsys):
    # Check that a run stopped part-way by an unreadable file (--on-error raise)
    # leaves the previous CSV byte for byte and no temporary file.
    data = _copy_readable_images(workdir, tmp_path / "data")
    (data / "zz_last.png").write_bytes(b"not an image")
    out = tmp_path / "out.csv"
    out.write_bytes(_OLD_CSV)
    args = ["predict", workdir / "cdc.onnx", data, "--csv", out, "--batch-size", "2"]
    assert main([str(arg) for arg in args]) == 1
    assert "zz_last.png" in capsys.readouterr().err
    assert out.read_bytes() == _OLD_CSV
    assert sorted(os.listdir(tmp_path)) == ["data", "out.csv"]
    # A successful run replaces it.
    assert main([str(arg) for arg in args[:5]] + ["--on-error", "skip"]) == 0
    _, rows = read_csv(out.read_text())
    assert len(rows) == 6 and rows[-1][:2] == ["zz_last.png", "unreadable"]
    assert sorted(os.listdir(tmp_path)) == ["data", "out.csv"]


def _full_disk_after(n_calls, real):
    """``real`` wrapped to raise ENOSPC from its ``n_calls + 1``-th call on."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) > n_calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return wrapper


def test_full_disk_during_predict_keeps_the_csv(
    workdir, fitted, tmp_path, monkeypatch, capsys
):
    # Check that a write failing part-way (a full disk) leaves the previous CSV
    # and no temporary file, with the OS message unchanged on one line.
    real_writer = csv.writer

    class HalfWriter:
        def __init__(self, file):
            self.writerow = _full_disk_after(3, real_writer(file).writerow)

    monkeypatch.setattr(csv, "writer", HalfWriter)
    out = tmp_path / "out.csv"
    out.write_bytes(_OLD_CSV)
    args = ["predict", workdir / "cdc.onnx", workdir / "images", "--csv", out]
    assert main([str(arg) for arg in [*args, "--on-error", "skip", "--quiet"]]) == 1
    assert out.read_bytes() == _OLD_CSV
    assert os.listdir(tmp_path) == ["out.csv"]
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["deepclust predict: error: [Errno 28] No space left on device"]


def test_failed_joblib_dump_keeps_the_previous_model(
    workdir, tmp_path, monkeypatch, capsys
):
    # Check that 'fit --format joblib' failing while it writes leaves the previous
    # file whole and no temporary file.
    def half_dump(value, filename, **kwargs):
        Path(filename).write_bytes(b"\x80\x05half a pickle")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(joblib, "dump", half_dump)
    output = tmp_path / "cd.joblib"
    output.write_bytes(b"the previous model")
    monkeypatch.chdir(workdir)
    code = main(
        ["fit", "images", "--model", "cd", "--epochs", "1", "--on-error", "skip",
         "--param", "n_heads=4", "--param", "backbone=mlp", "--image-size", "6",
         "-o", str(output), "--quiet"]
    )  # fmt: skip
    assert code == 1
    assert output.read_bytes() == b"the previous model"
    assert os.listdir(tmp_path) == ["cd.joblib"]
    assert "No space left on device" in capsys.readouterr().err


def test_failed_plot_keeps_the_previous_image(tmp_path, monkeypatch, capsys):
    # Check that 'select-k --plot' failing while it saves leaves the previous
    # image whole and no temporary file.
    figure = pytest.importorskip("matplotlib.figure")
    from sklearn.datasets import make_blobs

    def half_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(figure.Figure, "savefig", half_savefig)
    X, _ = make_blobs(n_samples=60, centers=3, n_features=2, random_state=0)
    np.save(tmp_path / "features.npy", X)
    (tmp_path / "k.png").write_bytes(b"the previous plot")
    monkeypatch.chdir(tmp_path)
    code = main(
        ["select-k", "features.npy", "--features", "precomputed", "--k-max", "3",
         "--resamples", "2", "--plot", "k.png"]
    )  # fmt: skip
    assert code == 1
    assert (tmp_path / "k.png").read_bytes() == b"the previous plot"
    assert sorted(os.listdir(tmp_path)) == ["features.npy", "k.png"]
    assert "No space left on device" in capsys.readouterr().err


def test_plot_format_follows_the_output_name(tmp_path, monkeypatch, capsys):
    # Check that the plot, written through a temporary file, has the format of
    # its name (an SVG for k.svg), and a PNG when the name has no suffix.
    pytest.importorskip("matplotlib")
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=60, centers=3, n_features=2, random_state=0)
    np.save(tmp_path / "features.npy", X)
    monkeypatch.chdir(tmp_path)
    for name in ["k.svg", "plot"]:
        run_in_process(
            "select-k", "features.npy", "--features", "precomputed", "--k-max", "3",
            "--resamples", "2", "--plot", name,
            cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
        )  # fmt: skip
    assert b"<svg" in (tmp_path / "k.svg").read_bytes()[:500]
    assert (tmp_path / "plot").read_bytes().startswith(b"\x89PNG")
    assert sorted(os.listdir(tmp_path)) == ["features.npy", "k.svg", "plot"]


def test_failed_report_keeps_the_previous_report(
    workdir, fitted, tmp_path, monkeypatch, capsys
):
    # Check that 'report' failing while it writes the page (here a character
    # that cannot be encoded) leaves the previous report whole and no temporary
    # file.
    pytest.importorskip("matplotlib")
    from deepclust import report

    monkeypatch.setattr(report, "_STYLE", "\ud800")
    output = tmp_path / "r.html"
    output.write_bytes(b"<html>the previous report</html>")
    monkeypatch.chdir(workdir)
    assert main(["report", "cdc-model", "images", "-o", str(output)]) == 1
    errors = [
        line
        for line in capsys.readouterr().err.splitlines()
        if not line.startswith("deepclust: warning:")
    ]
    assert len(errors) == 1 and errors[0].startswith("deepclust report: error: ")
    assert output.read_bytes() == b"<html>the previous report</html>"
    assert os.listdir(tmp_path) == ["r.html"]


# ---------------------------------------------------------------------------
# Files that vanish, odd names and links
# ---------------------------------------------------------------------------


def test_file_removed_after_listing_gets_an_unreadable_row(
    workdir, fitted, tmp_path, monkeypatch, capsys
):
    # Check that a file deleted between the listing of DATA and its reading is
    # an unreadable row with --on-error skip, and a one-line error otherwise.
    from deepclust import cli

    data = _copy_readable_images(workdir, tmp_path / "data")
    real_listing = cli._data_argument

    def listing_then_removal(path):
        files = real_listing(path)
        if os.path.exists(files[2]):
            os.remove(files[2])
        return files

    monkeypatch.setattr(cli, "_data_argument", listing_then_removal)
    out, _ = run_in_process(
        "predict", workdir / "cdc.onnx", data, "--on-error", "skip",
        cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    _, rows = read_csv(out)
    assert [row[1] for row in rows] == ["ok", "ok", "unreadable", "ok", "ok"]
    assert rows[2][0] == "f03.png"
    assert rows[2][-1].startswith("FileNotFoundError: no such file")
    (data / "f03.png").write_bytes((data / "f01.png").read_bytes())
    assert main(["predict", str(workdir / "cdc.onnx"), str(data)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "DATA has 1 path(s) that do not exist" in lines[0]


def test_non_utf8_file_names_keep_their_bytes(workdir, fitted, tmp_path):
    # Check that a file name that is not valid UTF-8 does not stop the CSV after
    # the header: every row is written, the name with its exact bytes, in the
    # --csv file and on standard output.
    data = _copy_readable_images(workdir, tmp_path / "data", n=2)
    raw_name = b"caf\xe9 \xff.png"  # Latin-1, not UTF-8
    try:
        os.rename(data / "f01.png", os.path.join(os.fsencode(data), raw_name))
        (data / "zz\udcff.png").write_bytes(b"not an image")  # b"zz\xff.png"
    except (OSError, UnicodeError):
        pytest.skip("the file system takes UTF-8 names only")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONUTF8": "0"}
    command = [sys.executable, "-m", "deepclust", "predict", "cdc.onnx", str(data),
               "--on-error", "skip", "--quiet"]  # fmt: skip
    for extra in [["--csv", str(tmp_path / "out.csv")], []]:
        result = subprocess.run(
            command + extra, cwd=workdir, capture_output=True, timeout=300, env=env
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        text = (tmp_path / "out.csv").read_bytes() if extra else result.stdout
        lines = text.splitlines()
        assert len(lines) == 4, text
        assert lines[1].startswith(raw_name + b",ok,")
        assert lines[2].startswith(b"f02.png,ok,")
        assert lines[3].startswith(b"zz\xff.png,unreadable,")


def test_broken_and_looping_links_get_rows(
    workdir, fitted, tmp_path, monkeypatch, capsys
):
    # Check that broken links and link loops named like images get an unreadable
    # row each, and that a link loop to a folder does not make listing endless.
    data = _copy_readable_images(workdir, tmp_path / "data", n=2)
    (data / "broken.png").symlink_to("nowhere.png")
    (data / "loop.png").symlink_to("loop.png")
    (data / "up").symlink_to("..", target_is_directory=True)
    out, err = run_in_process(
        "predict", workdir / "cdc.onnx", data, "--on-error", "skip",
        cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    _, rows = read_csv(out)
    assert [row[:2] for row in rows] == [
        ["broken.png", "unreadable"],
        ["f01.png", "ok"],
        ["f02.png", "ok"],
        ["loop.png", "unreadable"],
    ]
    assert rows[0][-1] == "FileNotFoundError: broken symbolic link to 'nowhere.png'"
    assert "Too many levels of symbolic links" in rows[3][-1]
    assert "4 input(s): 2 predicted, 2 unreadable" in err


# ---------------------------------------------------------------------------
# Flags in messages
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message, expected",
    [
        (
            "X has 2 image file(s) that cannot be decoded: 'X 1.png' (x); pass "
            "on_error='skip' to leave them out.",
            "DATA has 2 image file(s) that cannot be decoded: 'X 1.png' (x); pass "
            "--on-error skip to leave them out.",
        ),
        ("[Errno 28] No space left on device", "[Errno 28] No space left on device"),
        (
            "The 'n_clusters' parameter of CDCClusterer must be an int in the range "
            "[2, inf). Got 1 instead.",
            "The --n-clusters option of CDCClusterer must be an int in the range "
            "[2, inf). Got 1 instead.",
        ),
        (
            "X has 4 samples but n_clusters=5; lower n_clusters or max_epochs.",
            "DATA has 4 samples but --n-clusters 5; lower --n-clusters or --epochs.",
        ),
        (
            "Skipped 1 image file(s) of X that cannot be read: 'X has/n_clusters.png'",
            "Skipped 1 image file(s) of DATA that cannot be read: "
            "'X has/n_clusters.png'",
        ),
        (
            "X yields images of size (H, W) = (9, 8); pass image_size=(8, 8).",
            "DATA yields images of size (H, W) = (9, 8); pass --image-size (8, 8).",
        ),
        ("Unknown device 'tpu'", "Unknown device 'tpu'"),
        (
            "the model's batch_size; \"it's X.png\" is X",
            "the model's --batch-size; \"it's X.png\" is X",
        ),
    ],
)
def test_flags_replace_only_parameter_mentions(message, expected):
    # Check that parameter names become flags, and X becomes DATA, only where the
    # library names them: never inside quoted paths or in OS messages.
    from deepclust.cli import _in_flags

    assert _in_flags(message) == expected


def test_file_named_like_the_input_keeps_its_name(workdir, fitted, tmp_path, capsys):
    # Check that the error about a file named 'X 1.png' shows its real name.
    data = _copy_readable_images(workdir, tmp_path / "data", n=2)
    (data / "X 1.png").write_bytes(b"not an image")
    assert main(["predict", str(workdir / "cdc.onnx"), str(data)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("deepclust predict: error: DATA has 1 image file(s)")
    assert f"{str(data / 'X 1.png')!r}" in line and "DATA 1.png" not in line
