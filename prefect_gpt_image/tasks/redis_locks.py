"""Kept so ``prefect_gpt_image.tasks.redis_locks.RedisImageLockManager`` (the README's old path)
still imports: the code lives in :mod:`prefect_gpt_image.calls.redis_locks`."""

from prefect_gpt_image.calls.redis_locks import RedisImageLockManager

__all__ = ["RedisImageLockManager"]
