"""The report stage: reads only files written by the other stages, writes a report a person would rather look at.

``build_report(inputs, out_dir)`` writes ``report.md`` (plots referenced as ``plots/*.png``), ``report.html`` (one
self-contained file, plots inlined), ``trajectories.html`` (a static step-by-step trajectory viewer) and
``report.json`` (last). ``headline_table(inputs)`` is the Markdown table of base vs tuned per environment with the
held-in / held-out overall rows. See ``docs/report.md``.
"""

from agenttuning.report.build import ReportPaths, build_report
from agenttuning.report.headline import headline_table
from agenttuning.report.inputs import (
    ReportInputError,
    ReportInputs,
    SweepPoint,
    load_report_inputs,
)

__all__ = ["ReportInputError", "ReportInputs", "ReportPaths", "SweepPoint", "build_report", "headline_table",
           "load_report_inputs"]
