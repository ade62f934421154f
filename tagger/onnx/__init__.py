"""The ONNX graphs, their export helpers, the onnxruntime backend and the wd14-compatible package
(optional extra: ``pip install "dinov3-tagger[onnx]"``)."""
