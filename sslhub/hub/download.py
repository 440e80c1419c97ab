"""Plain HTTP downloads of checkpoints that are not on the Hub, resumable and checked.

The authors' MoCo checkpoints live on `dl.fbaipublicfiles.com`, so `huggingface_hub` cannot fetch them.
A download goes to `FILE.part`; an interrupted one continues from there with a `Range` request, and the
file takes its final name only once its length (and, when known, size and MD5) are right.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import constants as hf_constants
from tqdm.auto import tqdm

_CHUNK = 1 << 20


class DownloadError(ConnectionError):
    """A file cannot be downloaded (offline, unreachable, interrupted, corrupt); the message says what to do."""


def is_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` forbids the network, read when called (huggingface_hub reads it at import)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return bool(hf_constants.HF_HUB_OFFLINE)
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _total_from_content_range(header: str | None) -> int | None:
    """N of a `Content-Range: bytes a-b/N` (or `bytes */N`) header; None when absent or `*`."""
    total = (header or "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def download_file(
    url: str,
    path: str | os.PathLike,
    *,
    size: int | None = None,
    md5_prefix: str | None = None,
    timeout: float = 10.0,
    progress: bool = True,
    hint: str = "",
) -> Path:
    """Download `url` to `path` through `path.part`, resuming a partial `.part` with a `Range` request.

    Args:
        url: an http(s) URL.
        path: the final file; its folder is created.
        size: the expected size in bytes, when the source states it.
        md5_prefix: the expected MD5 (or its first hex digits, as the MoCo README prints them).
        timeout: seconds to wait for the connection and for each read, so that nothing hangs.
        progress: show a tqdm progress bar.
        hint: what to do by hand, appended to every error message.

    Returns:
        `path`, complete and checked.

    Raises:
        DownloadError: offline mode, the server cannot be reached or refuses, the transfer stops before the
            end (the `.part` file is kept: calling again resumes), or the size or MD5 is wrong (the file is
            deleted).
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    suffix = f" {hint}" if hint else ""
    if is_offline():
        raise DownloadError(f"HF_HUB_OFFLINE=1 is set: {url} is not downloaded.{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "sslhub"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if (
            error.code == 416
            and start
            and _total_from_content_range(error.headers.get("Content-Range")) == start
        ):
            response = None  # the .part file already holds every byte
        else:
            raise DownloadError(f"{url} answered HTTP {error.code} {error.reason}.{suffix}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"cannot reach {url} ({reason}).{suffix}") from error
    total = start
    if response is not None:
        with response:
            content_range = response.headers.get("Content-Range", "")
            if response.status != 206:  # the server ignored the Range header: start again
                start = 0
            elif not content_range.startswith(f"bytes {start}-"):
                part.unlink()
                raise DownloadError(
                    f"{url} sent another range ({content_range!r}) than asked for; run again."
                )
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            with (
                open(part, "ab" if start else "wb") as file,
                tqdm(
                    total=total,
                    initial=start,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=path.name,
                    disable=not progress,
                ) as bar,
            ):
                try:
                    while chunk := response.read(_CHUNK):
                        file.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as error:
                    bar.write(f"{path.name}: {type(error).__name__}: {error}")
    received = part.stat().st_size
    if total is not None and received < total:
        raise DownloadError(
            f"the download of {url} stopped after {received:,} of {total:,} bytes; {part} is kept: run the "
            f"same command again to resume.{suffix}"
        )
    problem = None
    if size is not None and received != size:
        problem = f"{received:,} bytes where the source states {size:,}"
    elif md5_prefix:
        digest = hashlib.md5()
        with open(part, "rb") as file:
            while block := file.read(_CHUNK):
                digest.update(block)
        if not digest.hexdigest().startswith(md5_prefix.lower()):
            problem = f"MD5 {digest.hexdigest()} where the source states {md5_prefix}..."
    if problem:
        part.unlink()
        raise DownloadError(
            f"{url} gave a file that is not the published one ({problem}); deleted it.{suffix}"
        )
    os.replace(part, path)
    return path
