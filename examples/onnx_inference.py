"""
Train once, predict anywhere with ONNX
======================================

Exports a fitted CDCClusterer to a single ONNX file whose graph takes uint8 NHWC
images, then clusters new images with :class:`deepclust.onnx.OnnxClusterer`, which
needs only numpy, Pillow and onnxruntime (no torch).
"""

# %%
import numpy as np

from deepclust import CDCClusterer
from deepclust.datasets import load_digits_images
from deepclust.onnx import OnnxClusterer

images, labels = load_digits_images()
cdc = CDCClusterer(n_clusters=10, max_epochs=10, random_state=0).fit(images)
cdc.export_onnx("digits_cdc.onnx")

model = OnnxClusterer("digits_cdc.onnx")
onnx_labels = model.predict(images)
print("agreement with torch:", np.mean(onnx_labels == cdc.predict(images)))
