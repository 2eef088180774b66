"""Request tensors through Triton's system shared memory (same host only).

:func:`shared_memory_inputs` copies the arrays of one request into a fresh POSIX
shared-memory region (``/dev/shm/covidct_<pid>_<random>``), registers it with the
server and yields ``InferInput`` objects that point into it. On exit - also after a
failed or timed-out request - the region is unregistered from the server (after a
deadline the server may still be reading it: the unregister is retried until the
abandoned request is done, at most ``release_wait_s``) and unlinked.
Output tensors stay in the gRPC response (they are a few kB).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from covidct.errors import ClientError

log = logging.getLogger(__name__)

REGION_PREFIX = "covidct_client"
ALIGN = 64  # bytes; each tensor starts on a cache-line boundary


class SharedMemoryUnavailableError(ClientError):
    """The region could not be created or the server refused to register it."""


def region_name() -> str:
    """A region name unique to this process and call (also the ``/dev/shm`` key)."""
    return f"{REGION_PREFIX}_{os.getpid()}_{uuid.uuid4().hex[:12]}"


def _layout(arrays: dict[str, np.ndarray]) -> tuple[dict[str, int], int]:
    offsets, size = {}, 0
    for name, array in arrays.items():
        offsets[name] = size
        size += -(-array.nbytes // ALIGN) * ALIGN
    return offsets, max(size, ALIGN)


@contextmanager
def shared_memory_inputs(
    client: grpcclient.InferenceServerClient,
    arrays: dict[str, np.ndarray],
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    release_wait_s: float = 60.0,
) -> Iterator[list[grpcclient.InferInput]]:
    """Yield InferInputs for ``arrays`` (name -> C-contiguous array) backed by shared memory.

    ``timeout_s``: deadline of the register/unregister calls (s).
    Raises SharedMemoryUnavailableError (before anything was sent for inference) when the
    region cannot be created or registered, so the caller can fall back to plain gRPC.
    """
    name = region_name()
    offsets, size = _layout(arrays)
    try:
        handle = shm.create_shared_memory_region(name, f"/{name}", size, create_only=True)
    except Exception as exc:  # SharedMemoryException, OSError
        raise SharedMemoryUnavailableError(
            f"cannot create shared-memory region /dev/shm/{name} ({size} bytes): {exc}"
        ) from exc
    registered = False
    try:
        for tensor, array in arrays.items():
            shm.set_shared_memory_region(handle, [np.ascontiguousarray(array)], offset=offsets[tensor])
        try:
            client.register_system_shared_memory(name, f"/{name}", size, headers=headers, client_timeout=timeout_s)
        except InferenceServerException as exc:
            if str(exc.status()).endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
                raise  # a transport failure, not a refusal: the caller retries or reports it
            raise SharedMemoryUnavailableError(
                f"the server refused shared-memory region {name} ({size} bytes): {exc.message()}"
            ) from exc
        registered = True
        inputs = []
        for tensor, array in arrays.items():
            item = grpcclient.InferInput(tensor, list(array.shape), np_to_triton_dtype(array.dtype))
            item.set_shared_memory(name, array.nbytes, offset=offsets[tensor])
            inputs.append(item)
        yield inputs
    finally:
        try:
            if registered:
                unregister(client, name, headers=headers, timeout_s=timeout_s, wait_s=release_wait_s)
        finally:
            shm.destroy_shared_memory_region(handle)


def unregister(
    client: grpcclient.InferenceServerClient,
    name: str,
    *,
    headers: dict[str, str] | None,
    timeout_s: float,
    wait_s: float,
) -> bool:
    """Unregister region ``name``; True when done (or the server is gone).

    After a deadline the server may still be running the abandoned request and refuses
    ("currently in use"): retry with backoff for up to ``wait_s`` seconds, then log a
    warning naming the region (it stays mapped by the server until unregistered).
    """
    start, pause = time.monotonic(), 0.02
    while True:
        try:
            client.unregister_system_shared_memory(name, headers=headers, client_timeout=timeout_s)
            return True
        except InferenceServerException as exc:
            message = exc.message() or ""
            if str(exc.status()).endswith("UNAVAILABLE"):
                return True  # server gone: its registrations went with it
            if "in use" not in message or time.monotonic() - start > wait_s:
                log.warning(
                    "shared-memory region %s is still registered on the server after %.1f s (%s); "
                    "unregister it with unregister_system_shared_memory(%r)",
                    name, time.monotonic() - start, message, name,
                )
                return False
        time.sleep(pause)
        pause = min(2 * pause, 1.0)
