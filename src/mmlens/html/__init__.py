"""Static HTML reports that open from disk: sections of text, tables, image cards and plots, with the JSON behind
every table beside the page (written atomically)."""

from mmlens.html.report import CardLine, HtmlReport, ImageCard, Section

__all__ = ["CardLine", "HtmlReport", "ImageCard", "Section"]
