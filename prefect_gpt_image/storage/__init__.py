"""Where image bytes go: a local folder or an S3 bucket behind one small interface.

Images are content-addressed (``{prefix}/images/{sha256}.{ext}``, never overwritten) and carry
small string metadata; JSON records (``put_json``/``get_json``) hold everything else. Use
:func:`resolve_store` to get a store from a path, an ``s3://`` URI, a prefect-aws ``S3Bucket``
block or the ``GPT_IMAGE_STORAGE`` environment variable.
"""

from .base import MAX_PRESIGN_TTL, ImageStore, StoredObject, check_key
from .local import DEFAULT_LOCAL_ROOT, STORAGE_ENV, LocalImageStore
from .resolve import resolve_store
from .s3 import S3ImageStore

__all__ = [
    "DEFAULT_LOCAL_ROOT",
    "MAX_PRESIGN_TTL",
    "STORAGE_ENV",
    "ImageStore",
    "LocalImageStore",
    "S3ImageStore",
    "StoredObject",
    "check_key",
    "resolve_store",
]
