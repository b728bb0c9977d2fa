"""Readable reports: static HTML pages with tables, image cards and plots, and the JSON behind them."""

from mmlens.report.html import CardLine, HtmlReport, ImageCard, Section
from mmlens.report.io import atomic_folder, atomic_text_file, json_default, write_json_atomic, write_jsonl_atomic

__all__ = [
    "atomic_folder", "atomic_text_file", "CardLine", "HtmlReport", "ImageCard", "json_default", "Section",
    "write_json_atomic", "write_jsonl_atomic",
]
