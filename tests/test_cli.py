"""Testing for the deepclust command line (deepclust.cli).

Most tests run the real ``deepclust`` command in a subprocess (``python -m
deepclust``), as users do, and check its files, standard output, standard error
and exit status.
"""

import csv
import io
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
    result = run("predict", "cd.joblib", image, "--decimals", "3", cwd=workdir)
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
        (["predict", "cdc-model", "notes.txt"], "DATA 'notes.txt' is neither a folder"),
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
        "data-not-images",
        "export-onnx",
        "export-missing-model",
    ],
)
def test_user_mistakes_give_one_line(workdir, fitted, args, expected):
    # Check that each user mistake prints one line naming the flag or path, exits
    # with status 1 and shows no traceback.
    (workdir / "empty").mkdir(exist_ok=True)
    (workdir / "notes.txt").write_text("not a model")
    (workdir / "junk.onnx").write_bytes(b"\x00not an onnx file")
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
    assert "CD heads" not in out


@pytest.mark.slow
def test_demo_trains_both_models_at_once_with_the_same_results(capsys):
    # Check that --jobs 2 trains CD and CDC in two worker processes and that each
    # row matches the same training run in this process (same threads).
    import torch

    from deepclust.cli import _demo_fit

    assert main(["demo", "--epochs", "1", "--jobs", "2", "--threads", "2"]) == 0
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
