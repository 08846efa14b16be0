"""Reports from the results store alone: `load` (rows, runs, published numbers), `tables` (leaderboard and the
other tables), `plots` (paper-width figures), `html` (static pages), `build` (`invoke report`)."""

from bench.report.build import build_reports, main
from bench.report.load import DEDUP_KEY, load_paper_reported, load_results, load_runs

__all__ = ["DEDUP_KEY", "build_reports", "load_paper_reported", "load_results", "load_runs", "main"]
