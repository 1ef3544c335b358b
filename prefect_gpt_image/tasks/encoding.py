"""Kept so ``prefect_gpt_image.tasks.encoding.md_text`` (the README's old path) and its siblings
still import: the code lives in :mod:`prefect_gpt_image.calls.encoding`."""

from prefect_gpt_image.calls.encoding import Markdown, csv_row, md_image, md_link, md_table, md_text

__all__ = ["Markdown", "csv_row", "md_image", "md_link", "md_table", "md_text"]
