"""Fetching the registry's files: opt-in, resumable, verified, explained. Standard library only.

* Data goes to ``<final name>.part`` and is renamed to the final name only after the size and checksum checks
  pass, so a half-written file never carries the final name.
* An existing ``.part`` is resumed with an HTTP ``Range`` request; a host that ignores ranges (answers 200) makes
  the transfer restart from zero. A connection dropped mid-way is retried (resuming) a few times.
* Redirects may only go to ``https`` (or ``http`` from an ``http`` URL): a hop from ``https`` down to plain
  ``http``, or to another scheme (``ftp``, ``file``), is refused -- the checksum would still catch a changed file,
  but a file without a published checksum would not be, and nothing should travel in clear once TLS was asked for.
* Sizes are checked before and while writing: a host announcing (``Content-Length``) another size than the
  published one is refused before a byte is written; the transfer stops as soon as it passes the published size,
  or, when only a rounded size is published, :func:`byte_limit`, so a lying or endless host cannot fill the disk.
* A file already in place is hashed and reported "already present" when it matches (nothing is fetched).
* Every failure raises :class:`DownloadError` whose message says what happened (no network, proxy, HTTP status,
  disk full, checksum mismatch, ...) and ends with the manual alternative: the URL and the folder.

Nothing here runs unless called: the pack never downloads at import time or on a node run, except through the
explicit ``SALIENT_BG_AUTO_DOWNLOAD=1`` opt-in handled in ``nodes/comfy_glue.py``.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..errors import UserFacingError
from .model_paths import ModelLocations, installed_in, installed_path
from .model_registry import ModelFile, human_size, lookup, manual_alternative, where_to_get

AUTO_DOWNLOAD_ENV = "SALIENT_BG_AUTO_DOWNLOAD"
USER_AGENT = "salient-background-downloader/1 (+python urllib)"
CHUNK = 1 << 20
UNKNOWN_SIZE_LIMIT = 16 * 10**9  # bytes: a file the table gives no size for (more than any model it lists)


class DownloadError(UserFacingError):
    """A download that failed; the message includes the manual alternative.

    When the file could not be fetched from any of its URLs, ``entry``, ``target`` (its final path) and
    ``failures`` (what went wrong with each URL) let a caller list several failures as one table."""

    def __init__(self, message: str, *, entry: ModelFile | None = None, target: str | None = None,
                 failures: tuple[str, ...] = ()):
        super().__init__(message)
        self.entry, self.target, self.failures = entry, target, tuple(failures)


@dataclass
class Outcome:
    entry: ModelFile
    path: str
    status: str  # "downloaded" | "present" | "planned"
    verified: bool  # a published checksum was checked
    note: str = ""


def auto_download_enabled() -> bool:
    return os.environ.get(AUTO_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def missing_model_message(key_or_filename: str, searched_folders, *, command_args: str = "") -> str:
    """Text for a node's or command's missing-file error: which file, where it looked, and where to get it (the
    registry's :func:`model_registry.where_to_get`, the one source of that hint)."""
    searched = [s for s in (searched_folders or []) if s]
    looked = ", ".join(searched) if searched else "(no model folder known)"
    entries = lookup(key_or_filename)
    if not entries:
        return (
            f"model file {key_or_filename!r} not found. Looked in: {looked}. Put it in one of those folders (or pass "
            f"a full path). {where_to_get(entries)}"
        )
    what = "; ".join(f"{m.filename} ({m.title}, {m.display_size()})" for m in entries)
    target = searched[0] if searched else None
    return (
        f"model file {key_or_filename!r} not found: {what}. Looked in: {looked}. "
        f"{where_to_get(entries, target_dir=target, command_args=command_args)} "
        f"Or set {AUTO_DOWNLOAD_ENV}=1 to let the node fetch it on first use."
    )


# ---------------------------------------------------------------------------------------------- verification
def _hashers(entry: ModelFile) -> dict:
    hashers = {}
    if entry.sha256:
        hashers["sha256"] = hashlib.sha256()
    if entry.md5:
        hashers["md5"] = hashlib.md5()
    return hashers


def _hash_file(path: str, hashers: dict) -> None:
    with open(path, "rb") as fh:
        while True:
            block = fh.read(CHUNK)
            if not block:
                break
            for h in hashers.values():
                h.update(block)


def _compare(entry: ModelFile, size: int, hashers: dict) -> str | None:
    """None when everything known matches, else a description of the first mismatch."""
    if entry.size is not None and size != entry.size:
        return f"size is {size} bytes, expected {entry.size}"
    for name, h in hashers.items():
        expected = getattr(entry, name)
        if h.hexdigest() != expected.lower():
            return f"{name} is {h.hexdigest()}, expected {expected}"
    return None


def check_file(path: str, entry: ModelFile) -> str | None:
    """Verify a file on disk against the table; None when it matches (or nothing is known to check)."""
    hashers = _hashers(entry)
    _hash_file(path, hashers)
    return _compare(entry, os.path.getsize(path), hashers)


# ---------------------------------------------------------------------------------------------- progress
class _Progress:
    def __init__(self, label: str, total: int | None, initial: int, enabled: bool, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.label, self.total, self.done = label, total, initial
        self._bar = None
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=label, file=self.stream, leave=True)
        except Exception:  # tqdm missing (it is optional): a plain status line
            self._bar = None

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last < 0.5 and (self.total is None or self.done < self.total):
            return
        self._last = now
        if self.total:
            text = f"{self.label}: {human_size(self.done)} / {human_size(self.total)} ({100 * self.done / self.total:.0f}%)"
        else:
            text = f"{self.label}: {human_size(self.done)}"
        self.stream.write("\r" + text)
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------- errors
class _Retryable(Exception):
    """Connection lost mid-transfer: resume."""


def network_advice(url: str) -> str:
    """The proxy hint every network failure ends with (the same for every URL of one scheme)."""
    proxies = urllib.request.getproxies()
    scheme = url.split(":", 1)[0]
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy:
        return f" The request went through the proxy {proxy} (from the environment's {scheme.upper()}_PROXY): check it."
    return (" Behind a proxy? Set HTTPS_PROXY=http://host:port (and HTTP_PROXY) before running the command.")


def _explain(exc: BaseException, url: str) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        code = exc.code
        if code == 407:
            return "HTTP 407 from the proxy: it needs credentials (HTTPS_PROXY=http://user:password@host:port)."
        if code in (401, 403):
            return (f"HTTP {code} ({exc.reason}) from {url}: the host refused access (the file may now need a login "
                    "or have moved).")
        if code == 404:
            return f"HTTP 404 from {url}: the file is not there any more (moved or renamed upstream)."
        if code == 416:
            return f"HTTP 416 from {url}: the host rejected the resume request."
        if 500 <= code < 600:
            return f"HTTP {code} ({exc.reason}) from {url}: the host has a problem; try again later."
        return f"HTTP {code} ({exc.reason}) from {url}."
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.gaierror) or isinstance(exc, socket.gaierror):
        return f"no network: cannot resolve the host of {url} ({reason})." + network_advice(url)
    if isinstance(reason, (TimeoutError, socket.timeout)) or isinstance(exc, (TimeoutError, socket.timeout)):
        return f"the connection to {url} timed out." + network_advice(url)
    if isinstance(reason, ConnectionRefusedError):
        return f"the connection to {url} was refused ({reason})." + network_advice(url)
    if isinstance(reason, ssl.SSLError) or isinstance(exc, ssl.SSLError):
        return (f"{_describe(reason if isinstance(reason, ssl.SSLError) else exc)} talking to {url}; a proxy that intercepts HTTPS needs its certificate "
                "installed for Python (SSL_CERT_FILE).")
    if isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"no network: {url} is unreachable ({reason})." + network_advice(url)
    return f"could not download {url}: {type(exc).__name__}: {reason}." + network_advice(url)


def _describe(exc: BaseException) -> str:
    """An exception as a short phrase; a TLS error is named as one (its bare text can read like a disk error)."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS/SSL error ({getattr(exc, 'reason', None) or exc})"
    return str(exc) or type(exc).__name__


def _disk_error(exc: OSError, target_dir: str, entry: ModelFile) -> str:
    if exc.errno == errno.ENOSPC:
        try:
            free = human_size(shutil.disk_usage(target_dir).free)
        except OSError:
            free = "unknown"
        return (f"disk full while writing into {target_dir} (free now: {free}; the file is {entry.display_size()}). "
                "Free some space or pass --models-dir on another disk.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write into {target_dir}: {exc.strerror}. Choose a writable folder with --models-dir."
    return f"file system error in {target_dir}: {exc}"


# ---------------------------------------------------------------------------------------------- transfer
class NoDowngradeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects (the hubs answer 302 to a CDN) but never from ``https`` to ``http``, nor to a scheme other
    than http(s) (urllib would follow ``ftp://``)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new = urllib.parse.urlsplit(newurl).scheme.lower()
        if new not in ("http", "https") or (old == "https" and new == "http"):
            raise DownloadError(f"{req.full_url} redirects to {newurl}: refused (a download asked over https never "
                                "continues over plain http or another scheme)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def make_opener(*handlers) -> urllib.request.OpenerDirector:
    """The downloader's URL opener: :class:`NoDowngradeRedirects` plus ``handlers`` (tests add their own)."""
    return urllib.request.build_opener(NoDowngradeRedirects, *handlers)


def byte_limit(entry: ModelFile) -> int:
    """The most bytes a download of ``entry`` may write: its published size, else its rounded size plus 10 % and
    1 MB, else :data:`UNKNOWN_SIZE_LIMIT`."""
    if entry.size is not None:
        return entry.size
    approx = entry.expected_bytes()
    return int(approx * 1.1) + 10**6 if approx else UNKNOWN_SIZE_LIMIT


def _open(url: str, start: int, timeout: float, opener):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    return (opener or make_opener()).open(request, timeout=timeout)


def _transfer(url: str, part: str, entry: ModelFile, *, timeout: float, opener, progress: bool, label: str) -> None:
    """One attempt: append to ``part`` (resuming from its size) until the server's body ends."""
    start = os.path.getsize(part) if os.path.exists(part) else 0
    if entry.size is not None and start > entry.size:
        os.remove(part)
        start = 0
    if entry.size is not None and start == entry.size:
        return  # already complete; verification decides
    try:
        response = _open(url, start, timeout, opener)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            # nothing left to send (or a stale partial file): let verification decide, else restart
            exc.close()
            if entry.size is None or start != entry.size:
                os.remove(part)
                raise _Retryable("range not satisfiable; restarting") from exc
            return
        raise
    with response:
        status = getattr(response, "status", 200)
        mode = "ab"
        if start and status != 206:
            start, mode = 0, "wb"  # the host ignored the Range header: restart from zero
        elif start:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                start, mode = 0, "wb"
                response.close()
                os.remove(part)
                raise _Retryable(f"unexpected Content-Range {content_range!r}; restarting")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else entry.size
        if entry.size is not None and total is not None and total != entry.size:
            raise DownloadError(
                f"{url} offers {total} bytes but {entry.filename} should be {entry.size} bytes: not the expected file."
            )
        limit = byte_limit(entry)
        if total is not None and total > limit:
            raise DownloadError(f"{url} offers {total} bytes but {entry.filename} is {entry.display_size()}: refused "
                                "before writing (not the expected file).")
        bar = _Progress(label, total, start, progress)
        received = 0
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (http.client.HTTPException, OSError) as exc:
                        # reading the body fails only on the network side (a TLS record error is an OSError with
                        # errno 1, not a permission problem of the disk): resume
                        raise _Retryable(f"connection lost after {start + received} bytes: {_describe(exc)}") from exc
                    if not block:
                        break
                    if start + received + len(block) > limit:  # no Content-Length, or a host sending more than it said
                        raise DownloadError(f"{url} sent more than the {limit} bytes {entry.filename} can be "
                                            f"({entry.display_size()}): stopped (not the expected file).")
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
        if (length and length.isdigit() and received < int(length)) or (
            entry.size is not None and start + received < entry.size
        ):
            raise _Retryable(f"connection closed after {start + received} of {total} bytes")


def download_entry(
    entry: ModelFile,
    target_dir: str,
    *,
    urls=None,
    retries: int = 3,
    timeout: float = 60.0,
    opener=None,
    progress: bool = True,
    log=None,
) -> Outcome:
    """Make ``target_dir/<entry.filename>`` exist and match the table. Returns what was done."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    final = os.path.join(target_dir, *entry.filename.split("/"))
    part = final + ".part"
    if os.path.isfile(final):
        problem = check_file(final, entry)
        if problem is None:
            return Outcome(entry, final, "present", entry.verified,
                           "" if entry.verified else "no published checksum: unverified")
        raise DownloadError(
            f"{final} exists but does not match the published file ({problem}). It is corrupt or a different "
            f"version: delete it and run the command again. {manual_alternative(entry, target_dir)}"
        )
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        expected = entry.expected_bytes()
        if expected is not None:
            # exact size when published, else the host's rounded figure with a 1 % allowance
            need = expected if entry.size is not None else int(expected * 0.99)
            have = os.path.getsize(part) if os.path.exists(part) else 0
            free = shutil.disk_usage(os.path.dirname(final)).free
            if free < need - have:
                raise DownloadError(
                    f"not enough disk space in {os.path.dirname(final)}: {entry.filename} needs "
                    f"{human_size(need - have)} more, {human_size(free)} free. Free some space or pass "
                    f"--models-dir on another disk. {manual_alternative(entry, target_dir)}"
                )
    except OSError as exc:
        raise DownloadError(f"{_disk_error(exc, target_dir, entry)} {manual_alternative(entry, target_dir)}") from exc
    if not entry.verified:
        log(f"note: {entry.filename} has no published checksum; it will be unverified"
            + (" (size checked)" if entry.size is not None else ""))

    failures = []
    for url in urls or entry.urls:
        failure = _fetch_from(url, part, final, entry, target_dir, retries=retries, timeout=timeout, opener=opener,
                              progress=progress, log=log)
        if failure is not None:
            failures.append(failure)
            continue
        problem = check_file(part, entry)
        if problem is None:
            os.replace(part, final)  # atomic on one file system: the final name only ever holds a checked file
            return Outcome(entry, final, "downloaded", entry.verified,
                           "" if entry.verified else "no published checksum: unverified")
        _remove(part)
        failures.append(f"checksum mismatch for the data from {url} ({problem}); the corrupt download was removed")
    reason = f"could not fetch {entry.filename} ({entry.title}): " + " | ".join(f.rstrip(". ") for f in failures)
    raise DownloadError(f"{reason}. {manual_alternative(entry, target_dir)}", entry=entry, target=final,
                        failures=failures)


def _fetch_from(url, part, final, entry, target_dir, *, retries, timeout, opener, progress, log) -> str | None:
    """Fill ``part`` from ``url``; None on success, else why not (network problems keep the partial file)."""
    attempt = 0
    while True:
        try:
            _transfer(url, part, entry, timeout=timeout, opener=opener, progress=progress, label=entry.basename)
            return None
        except _Retryable as exc:
            attempt += 1
            if attempt > retries:
                return (f"{url}: {exc} (gave up after {retries} retries; the partial file {part} is kept and the "
                        "next run resumes it)")
            log(f"{entry.basename}: {exc}; resuming (retry {attempt}/{retries})")
            time.sleep(min(0.2 * attempt, 2.0))
        except DownloadError as exc:
            _remove(part)
            return str(exc)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError,
                ssl.SSLError) as exc:
            return _explain(exc, url)
        except OSError as exc:  # writing the file: not the host's fault, other URLs would fail the same way
            kept = f" The partial file {part} is kept; the next run resumes it." if os.path.exists(part) else ""
            raise DownloadError(
                f"{_disk_error(exc, os.path.dirname(final), entry)}{kept} {manual_alternative(entry, target_dir)}"
            ) from exc


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------------------------- many files
def plan(entries, locations: ModelLocations) -> list[Outcome]:
    """What :func:`ensure` would do, without network: present files are hashed, the rest are 'planned'."""
    outcomes = []
    for entry in entries:
        existing = installed_path(entry, locations)
        if existing:
            problem = check_file(existing, entry)
            status = "present" if problem is None else "corrupt"
            outcomes.append(Outcome(entry, existing, status, entry.verified, problem or ""))
        else:
            target = os.path.join(locations.target(entry.folder), *entry.filename.split("/"))
            outcomes.append(Outcome(entry, target, "planned", entry.verified))
    return outcomes


def ensure(entries, locations: ModelLocations, **kwargs) -> list[Outcome]:
    """Download every entry that is not already present (in any of its candidate folders)."""
    outcomes = []
    for entry in entries:
        target_dir = installed_in(entry, locations) or locations.target(entry.folder)
        outcomes.append(download_entry(entry, target_dir, **kwargs))
    return outcomes


def model_file_path(
    key: str,
    models_dir: str | None = None,
    *,
    download: bool = False,
    extra_configs=(),
    comfyui_root: str | None = None,
    progress: bool = True,
) -> str:
    """Path of a published file (or of the ControlNet's folder, for ``"controlnet"``) for code outside ComfyUI.

    Looks in the folders :func:`model_paths.discover` finds (``models_dir`` first when given). A missing file is
    downloaded only when ``download`` is true; otherwise a :class:`CheckpointError` says which file, where it
    looked and the exact download command. Present files are not re-hashed here (the download command does that).
    """
    from ..errors import CheckpointError
    from .model_paths import discover

    entries = lookup(key)
    if not entries:
        raise CheckpointError(f"{key!r} is not one of the pack's published model files")
    locations = discover(models_dir, comfyui_root=comfyui_root, extra_configs=extra_configs)
    missing = [m for m in entries if installed_path(m, locations) is None]
    if missing and download:
        ensure(missing, locations, progress=progress)
        missing = []
    if missing:
        searched = sorted({p for m in missing for p in locations.paths(m.folder)})
        raise CheckpointError(
            missing_model_message(key, searched, command_args=f"--models-dir {models_dir}" if models_dir else "")
        )
    paths = [installed_path(m, locations) for m in entries]
    if len(paths) == 1:
        return paths[0]
    folders = {os.path.dirname(p) for p in paths}
    if len(folders) == 1:  # a diffusers folder (config + weights)
        return folders.pop()
    raise CheckpointError(f"{key!r} names several files in different folders: {', '.join(paths)}")
