"""The gpt-image-2 HTTP client: request/response models, errors and the client itself.

This layer does not import Prefect, so it can be used (and tested) on its own.
"""
