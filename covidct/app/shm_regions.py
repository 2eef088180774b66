"""Shared-memory region bookkeeping of a local Triton server (Linux, ``/dev/shm``).

Turns a server's shared-memory state into clean-up actions:

- the Python backend's pool files ``/dev/shm/<prefix>*`` of a server that exited, which no
  live process maps any more, into removed files (:func:`remove_stale_server_regions`);
- a region key/name ``covidct_client_<pid>_...`` into the pid of the client that
  registered it (:func:`client_region_pid`) and into whether that client is gone
  (:func:`client_region_is_stale`, from ``/proc``);
- the server's registered system shared-memory regions (HTTP ``/v2/systemsharedmemory``)
  into unregistered regions and unlinked files, one janitor pass at a time
  (:func:`sweep_client_regions`, used by :class:`covidct.app.supervisor.SupervisedServer`).

Region sizes are bytes (``byte_size``); times are seconds. Clients must share this
process's PID namespace for their regions to be judged (same host, same container).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from covidct.app.health import mapped_by_anyone, mapped_files, pid_alive
from covidct.errors import ConfigError

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
CLIENT_REGION = re.compile(r"^/?covidct_client_(\d+)_")
"""Key/name of a region the covidct client registers (``covidct.client.shared_memory``)."""


def remove_stale_server_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Unlink the files ``<shm_dir>/<prefix>*`` that no live process maps (the pools of a
    server that is gone); returns the removed paths. Call only after the server exited."""
    if not prefix:
        raise ConfigError("remove_stale_server_regions needs a non-empty prefix")
    candidates = {str(p) for p in Path(shm_dir).glob(f"{glob.escape(prefix)}*") if p.is_file()}
    removed = []
    for path in sorted(candidates - mapped_by_anyone(candidates)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(Path(path))
    return removed


def client_region_pid(key: str) -> int | None:
    """The client pid named by a region key/name ``covidct_client_<pid>_...``, else ``None``."""
    match = CLIENT_REGION.match(key)
    return int(match.group(1)) if match else None


def client_region_is_stale(key: str, shm_dir: Path = SHM_DIR) -> bool:
    """True when the client that created region ``key`` is gone: its pid is dead, or the
    pid (reused) does not map ``<shm_dir>/<key>``. Regions of other clients are never stale."""
    pid = client_region_pid(key)
    if pid is None:
        return False
    if not pid_alive(pid):
        return True
    try:
        return str(Path(shm_dir) / key.lstrip("/")) not in mapped_files(pid)
    except PermissionError:
        return False  # someone else's process: leave its region alone


def _http_json(url: str, timeout_s: float, method: str = "GET") -> object:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - an http:// URL built here
    with opener.open(request, timeout=timeout_s) as response:
        body = response.read()
    return json.loads(body) if body.strip() else None


def registered_regions(http_url: str, timeout_s: float = 5.0) -> list[dict]:
    """The server's registered system shared-memory regions (``name``, ``key``, ``byte_size``)
    from its HTTP endpoint ``host:port`` (the shared-memory protocol stays open with an admin key)."""
    status = _http_json(f"http://{http_url}/v2/systemsharedmemory/status", timeout_s)
    return list(status or [])


def sweep_client_regions(
    http_url: str, suspects: frozenset[str] = frozenset(), timeout_s: float = 5.0, shm_dir: Path = SHM_DIR
) -> tuple[list[str], frozenset[str]]:
    """One janitor pass over the server at ``http_url``: ``(unregistered, suspects)``.

    A region judged stale (:func:`client_region_is_stale`) is unregistered, and its file
    unlinked, only when it was already among ``suspects`` (stale in the previous pass):
    a live client unregisters and unmaps its region right after its request, and a
    single look may fall between the two. Regions stale for the first time, or that the
    server still uses ("in use"), are returned as the next pass's suspects.
    """
    swept, stale = [], set()
    for region in registered_regions(http_url, timeout_s):
        name, key = str(region.get("name", "")), str(region.get("key", ""))
        if not client_region_is_stale(key or name, shm_dir):
            continue
        if name not in suspects:
            stale.add(name)
            continue
        quoted = urllib.parse.quote(name, safe="")
        try:
            _http_json(f"http://{http_url}/v2/systemsharedmemory/region/{quoted}/unregister", timeout_s, "POST")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("cannot unregister stale shared-memory region %s: %s", name, exc)
            stale.add(name)
            continue
        (Path(shm_dir) / (key or name).lstrip("/")).unlink(missing_ok=True)
        log.warning("unregistered shared-memory region %s: client pid %s is gone", name, client_region_pid(key))
        swept.append(name)
    return swept, frozenset(stale)
