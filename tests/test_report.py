"""Testing for the self-contained HTML report (deepclust.report)."""

import base64
import io
import os
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.datasets import make_shape_images

pytest.importorskip("matplotlib")

from deepclust.report import write_report  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

CHROMIUM = "/usr/bin/chromium"
# The flags this machine's notes give for a headless Chromium without network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _Page(HTMLParser):
    """The tags of a page: img sources, cluster sections, ids, links."""

    def __init__(self):
        super().__init__()
        self.images, self.clusters, self.ids, self.urls = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "section" and attrs.get("class") == "cluster":
            self.clusters.append(attrs["id"])
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for name in ("src", "href"):
            if name in attrs:
                self.urls.append(attrs[name])


def parse(path):
    page = _Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    return page


def decoded_images(page):
    """Every inlined image, decoded with Pillow."""
    images = []
    for source in page.images:
        assert source.startswith("data:image/png;base64,"), source[:40]
        data = base64.b64decode(source.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            images.append(np.asarray(image.convert("RGB")))
    return images


@pytest.fixture(scope="module")
def data():
    return make_shape_images(48, image_size=8, n_classes=3, random_state=0)


@pytest.fixture(scope="module")
def cdc_report(data, tmp_path_factory):
    images, labels = data
    # Small batches: three non-empty clusters after 3 epochs, for a useful example.
    model = CDCClusterer(3, max_epochs=3, batch_size=8, random_state=0).fit(images)
    path = tmp_path_factory.mktemp("report") / "cdc-report.html"
    write_report(model, images, path, y=labels, n_images=4, n_borderline=2)
    return model, path


def test_report_has_a_section_per_cluster_and_decodable_images(cdc_report, data):
    # Check one section per cluster, the other sections, that every image is a
    # PNG data URI that decodes to a drawn picture, and that nothing is linked
    # from elsewhere.
    model, path = cdc_report
    page = parse(path)
    assert page.clusters == ["cluster-0", "cluster-1", "cluster-2"]
    for anchor in (
        "summary",
        "sizes",
        "clusters",
        "map",
        "curves",
        "confusion",
        "parameters",
    ):
        assert anchor in page.ids
    images = decoded_images(page)
    non_empty = int((np.bincount(model.predict(data[0]), minlength=3) > 0).sum())
    # sizes, one gallery per non-empty cluster, map, curves, confusion matrix
    assert len(images) == 1 + non_empty + 3
    for image in images:
        assert image.shape[0] > 50 and image.shape[1] > 50
        assert image.std() > 10  # not blank
    assert all(url.startswith(("data:", "#")) for url in page.urls)
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "training time" in text and "max_epochs" in text
    assert "CDCClusterer" in text


def test_cd_report_has_heads_and_chooses_k(data, tmp_path):
    # Check a ContrastiveDisentangler's report: head galleries, and a number of
    # clusters chosen by stability (explained on the page) when none is given.
    images, _ = data
    model = ContrastiveDisentangler(
        n_heads=6, max_epochs=2, batch_size=16, random_state=0
    ).fit(images)
    path = write_report(model, images, tmp_path / "cd.html", n_images=3)
    page = parse(path)
    text = path.read_text(encoding="utf-8")
    assert "heads" in page.ids
    match = re.search(
        r"The number of clusters, (\d+), was chosen by the stability", text
    )
    assert match, text[:2000]
    assert len(page.clusters) == int(match.group(1))
    decoded_images(page)
    fixed = parse(write_report(model, images, tmp_path / "cd4.html", n_clusters=4))
    assert len(fixed.clusters) == 4


def test_large_inputs_are_sampled(data, tmp_path):
    # Check that only max_samples inputs are shown and that the page says so.
    images, _ = data
    model = CDCClusterer(3, max_epochs=1, batch_size=16, random_state=0).fit(images)
    path = write_report(model, images, tmp_path / "small.html", max_samples=20)
    text = path.read_text(encoding="utf-8")
    assert "48 (a random sample of 20 is shown)" in text
    decoded_images(parse(path))


def test_tabular_report(blobs, tmp_path):
    # Check that a tabular model's report has its cluster sections without
    # image galleries.
    X, _ = blobs
    model = CDCClusterer(3, max_epochs=1, batch_size=20, random_state=0).fit(X)
    path = write_report(model, X, tmp_path / "tabular.html")
    page = parse(path)
    assert len(page.clusters) == 3
    assert "Tabular data: no images to show." in path.read_text(encoding="utf-8")
    assert len(decoded_images(page)) == 3  # sizes, map, curves


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"needs Debian's chromium at {CHROMIUM} (.ci/run installs it)",
)
def test_report_renders_offline_in_a_browser(cdc_report):
    # Check in a real headless browser that every image of the report loads and
    # that no request leaves the file.
    playwright = pytest.importorskip("playwright.sync_api")
    _, path = cdc_report
    requests = []
    profile = tempfile.mkdtemp(prefix="deepclust-chromium-")
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
            )
            try:
                page = browser.new_page()
                page.on("request", lambda request: requests.append(request.url))
                page.goto(path.resolve().as_uri(), wait_until="load")
                widths = page.evaluate(
                    "Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
                )
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert len(widths) == len(parse(path).images) > 0
    assert all(complete and width > 0 for complete, width in widths), widths
    assert requests, "the browser reported no request at all"
    outside = [url for url in requests if not url.startswith(("file://", "data:"))]
    assert outside == []
