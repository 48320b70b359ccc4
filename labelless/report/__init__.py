"""The run report: `write_report(run_dir)` writes a self-contained `report.html` (see `html.py`)."""
from labelless.report.html import write_report

__all__ = ["write_report"]
