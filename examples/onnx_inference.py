"""
Train once, predict anywhere with ONNX
======================================

Exports a fitted CDCClusterer to a single ONNX file whose graph takes uint8 NHWC
images, then clusters new images with :class:`deepclust.onnx.OnnxClusterer`, which
needs only numpy, Pillow and onnxruntime (no torch). A short training is enough to
show that both give the same clusters.
"""

# %%
import numpy as np

from deepclust import CDCClusterer
from deepclust.datasets import load_digits_images
from deepclust.onnx import OnnxClusterer

images, labels = load_digits_images()
cdc = CDCClusterer(n_clusters=10, max_epochs=3, random_state=0).fit(images)
path = cdc.export_onnx("digits_cdc.onnx")
print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")

# %%
# On the deployment machine, only this part runs: ``deepclust.onnx`` imports
# neither torch nor scikit-learn.
model = OnnxClusterer(path)
onnx_labels = model.predict(images)
print("outputs of the graph:", model.output_names)
print("agreement with torch:", np.mean(onnx_labels == cdc.predict(images)))
print(
    "largest probability difference:",
    float(np.abs(model.predict_proba(images) - cdc.predict_proba(images)).max()),
)
