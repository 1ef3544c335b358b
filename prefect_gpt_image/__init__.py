"""Prefect 3 integration for the gpt-image-2 Images API."""
