"""The call engine: one billing-safe paid image call, and what it needs.

The order of a paid call is shown at the top of :mod:`.call` (cache record -> spool -> budget ->
lock -> limits -> the paid call -> store -> record -> artifacts). Around it: cache keys and records
(:mod:`.cache`), locks (:mod:`.locks`, :mod:`.redis_locks`), the spool (:mod:`.spool`), budgets
(:mod:`.budget`), retry rules (:mod:`.retry`), reading inputs (:mod:`.inputs`), request builders
(:mod:`.requests`), concurrency limits and leases (:mod:`.concurrency`), shared API clients
(:mod:`.clients`), a call's artifacts (:mod:`.artifacts`), safe Markdown/CSV (:mod:`.encoding`)
and what a run paid versus what the store served (:mod:`.bill`, :mod:`.charges`).

This layer sits between ``blocks`` and ``tasks``: it imports no Prefect task or flow of ours. The
image tasks (:mod:`prefect_gpt_image.tasks`) and the batch and chain flows
(:mod:`prefect_gpt_image.flows`) both build on the names exported here; batch rows and chain steps
call :func:`run_row_call` directly (a Prefect task run per row would cost more than the row).
"""

from .bill import Bill, bill_line, usd
from .budget import exceeded_cap, spent
from .cache import (
    CACHE_FOLDER,
    CACHE_KEY_METADATA,
    cache_key,
    read_manifest,
    read_record,
    read_records,
    record_key,
    record_name,
)
from .call import CallResult, run_image_call
from .charges import Charges
from .clients import aclose_clients
from .clock import use_clock
from .concurrency import (
    admitted,
    ensure_limit,
    hold_slots,
    process_limits,
    release_idle_leases,
    slots_in_use,
)
from .context import batch_rows, call_prices, client_config, in_batch, run_logger
from .delivery import with_links
from .encoding import csv_row, data_uri, md_image, md_inline_png, md_link, md_table, md_text
from .errors import (
    BatchFailedError,
    BudgetExceededError,
    CacheLockTimeoutError,
    ImagesLostError,
    ImagesSpooledError,
    ImageStorageError,
    ImageTaskError,
    InputImageError,
    PartialDeliveryError,
)
from .inputs import ImageInput, InputCache, local_input, read_input, read_once, run_cache
from .locks import ImageLockManager, get_lock_manager, use_lock_manager
from .refs import ImageRef
from .requests import edit_request, generate_request
from .retry import (
    RETRIES,
    RETRY_DELAYS,
    BilledAttempts,
    collect_maybe_billed,
    is_safe_to_retry,
    retry_condition,
)
from .rows import run_row_call
from .store_check import check_store
from .thumbs import ensure_thumbnails, thumbnail_key, thumbnails_per_run

__all__ = [
    "CACHE_FOLDER",
    "CACHE_KEY_METADATA",
    "RETRIES",
    "RETRY_DELAYS",
    "BatchFailedError",
    "Bill",
    "BilledAttempts",
    "BudgetExceededError",
    "CacheLockTimeoutError",
    "CallResult",
    "Charges",
    "ImageInput",
    "ImageLockManager",
    "ImageRef",
    "ImageStorageError",
    "ImageTaskError",
    "ImagesLostError",
    "ImagesSpooledError",
    "InputCache",
    "InputImageError",
    "PartialDeliveryError",
    "aclose_clients",
    "admitted",
    "batch_rows",
    "bill_line",
    "cache_key",
    "call_prices",
    "check_store",
    "client_config",
    "collect_maybe_billed",
    "csv_row",
    "data_uri",
    "edit_request",
    "ensure_limit",
    "ensure_thumbnails",
    "exceeded_cap",
    "generate_request",
    "get_lock_manager",
    "hold_slots",
    "in_batch",
    "is_safe_to_retry",
    "local_input",
    "md_image",
    "md_inline_png",
    "md_link",
    "md_table",
    "md_text",
    "process_limits",
    "read_input",
    "read_manifest",
    "read_once",
    "read_record",
    "read_records",
    "record_key",
    "record_name",
    "release_idle_leases",
    "retry_condition",
    "run_cache",
    "run_image_call",
    "run_logger",
    "run_row_call",
    "slots_in_use",
    "spent",
    "thumbnail_key",
    "thumbnails_per_run",
    "usd",
    "use_clock",
    "use_lock_manager",
    "with_links",
]
