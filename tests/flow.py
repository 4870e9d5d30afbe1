"""Drive a running stack like its users do: the flow lives in ``streams.flow`` (the
benchmarks run it too); the tests import it from here."""

from streams.flow import FlowReport, RawRecord, run_flow

__all__ = ["FlowReport", "RawRecord", "run_flow"]
