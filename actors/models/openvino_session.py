"""A model on OpenVINO's CPU plugin, behind the part of onnxruntime's session interface that
insightface's model classes call (``run``, ``get_providers``).

Why: on CPU, OpenVINO runs the recogniser (w600k_mbf, a MobileFaceNet) about twice as fast
as onnxruntime's CPU provider, at fp32 and with the same embeddings (cosine >= 0.99999 on
the sample photos' faces): BENCHMARKS.md, "Model path". The detector stays on onnxruntime,
which was as fast or faster there (SCRFD-500M at 640: 10.2 against 11.6 ms).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

# The name get_providers() reports: what actually runs the model, as onnxruntime names its own.
PROVIDER = "OpenVINO-CPU"


class OpenVinoSession:
    """One compiled model, any batch size, ``streams`` calls at once (one per thread).

    ``threads`` is each call's share of cores (onnxruntime's intra_op_num_threads), and
    ``streams`` the calls that run in parallel (the replica's model.compute_threads): the
    plugin splits its threads between its streams, and a second call on a one-stream model
    would wait for the first.
    """

    def __init__(self, model_path: Path, *, threads: int, streams: int) -> None:
        import openvino  # telemetry off: actors/models/telemetry.py

        core = openvino.Core()
        model = core.read_model(str(model_path))
        shape = model.inputs[0].get_partial_shape()
        shape[0] = -1  # any number of crops per call
        model.reshape({model.inputs[0]: shape})
        self._compiled = core.compile_model(
            model,
            "CPU",
            {
                # The default on CPUs with bf16 (this one has it) is bf16: other embeddings.
                "INFERENCE_PRECISION_HINT": "f32",
                "NUM_STREAMS": streams,
                "INFERENCE_NUM_THREADS": threads * streams,
                # Replicas share the machine's cores: pinned threads would pile onto the same.
                "ENABLE_CPU_PINNING": False,
            },
        )
        self._requests = threading.local()  # an infer request serves one call at a time
        # One call now, from this thread: the bindings set up their numpy API on first use,
        # and two threads doing that at once can deadlock (one holds the GIL and waits on a
        # C++ static another is initialising, which waits for the GIL). Seen: a replica's
        # self-check stuck for good with both compute threads in that first call.
        model_input = self._compiled.inputs[0]
        crop = [1, *(d.get_length() for d in model_input.get_partial_shape()[1:])]
        self.run(None, {model_input.get_any_name(): np.zeros(crop, np.float32)})

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        results = request.infer(feed)
        outputs = (
            self._compiled.outputs
            if output_names is None
            else [self._compiled.output(name) for name in output_names]
        )
        # Copies: the request's output tensors are overwritten by its next call.
        return [np.array(results[output]) for output in outputs]

    def get_providers(self) -> list[str]:
        return [PROVIDER]
