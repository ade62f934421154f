"""ZeroGPU on a CPU: runs ``ModelRunner`` under the real ``spaces`` package with
``SPACES_ZERO_GPU=true`` and writes what happened to a JSON file (``tests/test_zerogpu.py``
starts it in a subprocess, so that the environment and spaces' torch patching stay here).

Stubbed, and only these: the scheduler's HTTP calls (``client.schedule``, ``release``,
``allow``), CUDA start-up and the weight copy (``spaces.zero.torch.init`` and ``move``), and the
two attributes a CPU-only torch build lacks for ``spaces`` to import. Everything else is the
package's own code: the ``.to("cuda")`` placeholders made while the model loads, the forked
worker, arguments through its queue (tensors by shared memory), results pickled back,
exceptions turned into ``gr.Error``. In the worker "CUDA" is the CPU: ``move`` gives each
placeholder its CPU original, and ``init`` makes ``Tensor.to("cuda")`` stay on the CPU.

Usage: ``python tests/zerogpu_sim.py CHECKPOINT VOCAB OUT.json``
"""

# ruff: noqa: E402  (the environment and torch are set up before spaces and tagger are imported)
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ["SPACES_ZERO_GPU"] = "true"
os.environ.setdefault("SPACES_ZERO_DEVICE_API_URL", "http://127.0.0.1:9")  # never dialled: stubbed
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch

torch.set_num_threads(1)  # no OpenMP pool in the parent: forking one is unsafe
# A CPU-only build has no CUDA version and no ``_cuda_init``, both read when spaces imports.
torch.version.cuda = torch.version.cuda or "12.8"  # type: ignore[misc]
if not hasattr(torch._C, "_cuda_init"):

    def _no_cuda_init() -> None:
        raise RuntimeError("This torch build has no CUDA.")

    torch._C._cuda_init = _no_cuda_init  # type: ignore[attr-defined]


def _not_in_bad_fork() -> bool:  # the CPU build's is a lambda, which spaces cannot pickle
    return False


torch.cuda._is_in_bad_fork = _not_in_bad_fork  # type: ignore[assignment]

import spaces  # noqa: F401  # before tagger, as app.py does
from spaces.zero import client, decorator
from spaces.zero import torch as zero_torch
from spaces.zero.api import ScheduleResponse
from spaces.zero.gradio import error as zerogpu_error
from spaces.zero.torch import patching

EVENTS = Path(os.environ.get("ZEROGPU_SIM_EVENTS", "zerogpu-events.txt"))


def record(what: str) -> None:
    """Append ``what pid`` to the events file: the worker is another process."""
    with open(EVENTS, "a") as f:
        f.write(f"{what} {os.getpid()}\n")


def events() -> list[list[str]]:
    return [line.split() for line in EVENTS.read_text().splitlines()] if EVENTS.exists() else []


# -- the scheduler -----------------------------------------------------------------------------
scheduled: list[int] = []  # requested durations, seconds
released: list[bool] = []  # fail flags
quota_left = [10**9]  # seconds; a request above it is refused, as ZeroGPU does


def schedule(task_id, request=None, duration=None, gpu_size=None, **kwargs):
    seconds = round(client.get_duration_seconds(duration, gpu_size))
    scheduled.append(seconds)
    if seconds > quota_left[0]:
        raise zerogpu_error(
            "ZeroGPU quota exceeded",
            f"You have exceeded your free ZeroGPU quota ({seconds}s requested vs. {quota_left[0]}s left).",
        )
    return ScheduleResponse(idle=True, nvidiaIndex=0, nvidiaUUID="GPU-simulated", allowToken="token")


def release(allow_token, fail=False, allow_404=False):
    released.append(fail)


client.schedule = schedule
client.release = release
client.allow = lambda allow_token: record("allow")

# -- CUDA in the worker ------------------------------------------------------------------------
_tensor_to = torch.Tensor.to


def _to_stays_on_cpu(self, *args, **kwargs):
    extra = {"copy": kwargs.pop("copy")} if "copy" in kwargs else {}
    device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
    if device is not None and device.type == "cuda":
        device = torch.device("cpu")
    if memory_format is not None:
        extra["memory_format"] = memory_format
    return _tensor_to(self, device=device, dtype=dtype, non_blocking=non_blocking, **extra)


def init(nvidia_uuid: str) -> None:
    record("init")
    torch.Tensor.to = _to_stays_on_cpu  # type: ignore[method-assign]


def move(callback=None) -> None:
    record("move")
    for placeholder, original in patching.cuda_aliases.items():
        placeholder.data = original


zero_torch.init = init
zero_torch.move = move

# -- the app's side ----------------------------------------------------------------------------
import numpy as np
from PIL import Image

import tagger.web.runtime as runtime
from tagger.engine.tagger import IMAGES_PER_GPU_CALL, Tagger
from tagger.features.pca import analyse
from tagger.features.relevance import relevance
from tagger.features.similarity import PAIRS_PER_CALL
from tagger.web.context import user_errors
from tagger.web.runtime import ModelRunner

_release_memory = runtime.release_memory


def release_memory() -> None:
    record("release_memory")
    _release_memory()


runtime.release_memory = release_memory


def inspect_pixels(tagger: Tagger, pixels: list[torch.Tensor]) -> list[dict]:
    """Work that reports what arrived in the GPU function."""
    record("inspect")
    return [{"dtype": str(p.dtype), "shape": list(p.shape), "shared": p.is_shared()} for p in pixels]


def out_of_memory(tagger: Tagger, pixels: list[torch.Tensor]) -> None:
    record("out_of_memory")
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def crash(tagger: Tagger, pixels: list[torch.Tensor]) -> None:
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def attempt(fn) -> dict:
    """What the caller sees when ``fn`` raises: type, message and gr.Error title."""
    try:
        fn()
    except Exception as e:
        message = getattr(e, "message", None) or str(e)  # gr.Error's str() is a repr
        return {"type": type(e).__name__, "message": message, "title": getattr(e, "title", None)}
    return {"type": None}


def main(checkpoint: str, vocab: str, out_path: str) -> None:
    started = time.perf_counter()
    facts: dict = {}
    tagger = Tagger(checkpoint, vocab)  # device "auto": emulated CUDA, like the Space
    facts["device"] = str(tagger.device)
    tensors = {id(t) for t in [*tagger.model.parameters(), *tagger.model.buffers()]}
    facts["model_tensors"] = len(tensors)
    facts["registered_at_load"] = len(patching.cuda_aliases)
    runner = ModelRunner(tagger)
    facts["gpu_functions"] = len({id(f) for f in decorator.decorated_cache.values()})

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(48, 64), (40, 72)]]
    pixels = [tagger.prepare(image) for image in images]
    facts["prepared"] = [{"dtype": str(p.dtype), "shape": list(p.shape)} for p in pixels]

    # Requests in the worker, compared with the same model on the CPU in this process, batched
    # the same way (a GPU batches mixed sizes with padding; bf16 rounds a padded batch a little
    # differently from one image at a time).
    reference = Tagger(
        checkpoint,
        vocab,
        device="cpu",
        dtype=tagger.dtype,
        max_batch_size=tagger.max_batch_size,
        max_padding=tagger.max_padding,
    )
    probabilities = runner.probabilities(pixels)
    facts["first_call_seconds"] = scheduled[-1]  # a fresh worker: asks for more
    descriptors = runner.descriptors(pixels)
    facts["second_call_seconds"] = scheduled[-1]
    maps = runner.call(analyse, pixels[:1])[0]
    heat = runner.call(relevance, pixels[:1], 3, 2)[0]
    facts["probabilities_close"] = bool(np.allclose(probabilities, reference.run(pixels), atol=1e-5))
    facts["descriptors_close"] = bool(np.allclose(descriptors, reference.run_descriptors(pixels), atol=1e-4))
    facts["pca_close"] = bool(np.allclose(maps.probabilities, reference.run(pixels[:1])[0], atol=1e-5))
    facts["heatmap_close"] = bool(np.allclose(heat.map, relevance(reference, pixels[:1], 3, 2)[0].map, atol=1e-3))
    facts["arrived"] = runner.call(inspect_pixels, pixels)
    facts["registered_after_requests"] = len(patching.cuda_aliases)

    # Errors inside the worker.
    before = len(events())
    facts["oom"] = attempt(lambda: runner.call(out_of_memory, pixels))
    facts["oom_as_shown"] = attempt(user_errors(lambda: runner.call(out_of_memory, pixels)))
    facts["oom_release_fail_flags"] = released[-2:]
    facts["after_oom_probabilities_close"] = bool(np.allclose(runner.probabilities(pixels), probabilities))
    facts["oom_events"] = events()[before:]
    facts["user_error"] = attempt(lambda: runner.call(relevance, pixels[:1], 10**6))
    before = len(events())
    facts["crash"] = attempt(lambda: runner.call(crash, pixels))
    facts["after_crash_probabilities_close"] = bool(np.allclose(runner.probabilities(pixels), probabilities))
    facts["after_crash_seconds"] = scheduled[-1]
    facts["crash_events"] = events()[before:]

    # Durations at the sizes the app sends (the 1024 px cap), with no quota left, so ZeroGPU
    # refuses each and nothing runs: what matters is what was asked for.
    quota_left[0] = 0
    big = torch.zeros(3, 1024, 1024, dtype=pixels[0].dtype)
    mid = torch.zeros(3, 512, 512, dtype=pixels[0].dtype)
    work = {
        "tag_512": lambda: runner.probabilities([mid]),
        "tag_1024": lambda: runner.probabilities([big]),
        "batch_chunk_1024": lambda: runner.probabilities([big] * IMAGES_PER_GPU_CALL),
        "pca_1024": lambda: runner.call(analyse, [big]),
        "heatmap_1024": lambda: runner.call(relevance, [big], 3, 2),
        "similarity_pair_1024": lambda: runner.descriptors([big, big]),
        "similarity_zip_call_1024": lambda: runner.descriptors([big] * (2 * PAIRS_PER_CALL)),
    }
    facts["durations"] = {}
    facts["refusals"] = {}
    for name, request in work.items():
        facts["refusals"][name] = attempt(request)
        facts["durations"][name] = scheduled[-1]
    facts["events"] = events()
    facts["main_pid"] = os.getpid()
    facts["seconds"] = time.perf_counter() - started
    Path(out_path).write_text(json.dumps(facts, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
