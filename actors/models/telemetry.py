"""The model runtimes' own telemetry, switched off before either is imported.

onnxruntime (1.29 on, every platform) uploads usage events and keeps a device id under
``~/.cache/Microsoft``; importing openvino sends a usage event to a web analytics service
and writes a client id under ``~/intel``, both unless told not to. facestream sends nothing
anywhere and stores nothing it was not asked to. openvino also sends from a child process it
forks, and forking a Ray replica, whose gRPC threads may hold locks, is unsafe (gRPC says so
in the replica's log: "Other threads are currently calling into gRPC, skipping fork()
handlers").
"""

from __future__ import annotations

import os
import sys


def switch_off_runtime_telemetry() -> None:
    """Call before onnxruntime or openvino is first imported in the process."""
    # onnxruntime's documented opt-out, read once when it initialises: nothing is created,
    # kept or sent. An operator's own value wins.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    # openvino uses its own no-op stub when ``openvino_telemetry`` cannot be imported, and a
    # None in sys.modules makes that import fail.
    if "openvino" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
