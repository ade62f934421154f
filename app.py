"""Hugging Face Space entry point: `python app.py` (see README for flags and env vars)."""

import spaces  # noqa: F401  # on ZeroGPU, must be imported before torch initialises CUDA

from tagger.web.server import create_app, launch

demo, context = create_app()

if __name__ == "__main__":
    launch(demo)
