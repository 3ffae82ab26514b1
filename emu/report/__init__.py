"""Fault reports: why a run ended in a triple fault (the chain, states, descriptors, code, the
last instructions executed, the serial tail), as text for stderr and as JSON (--report)."""

from emu.report.build import build_report, with_replay
from emu.report.model import SCHEMA_ID, FaultReport
from emu.report.text import render

__all__ = ["SCHEMA_ID", "FaultReport", "build_report", "render", "with_replay"]
