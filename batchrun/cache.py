"""The request cache: successful replies stored on local disk under a hash of the request.

Owns the cache key (canonical body + endpoint), the entry format, and atomic, verified
reads and writes, safe with several processes sharing the directory and under kill -9.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .errors import ConfigError

__all__ = [
    "IGNORED_FIELDS",
    "CacheInfo",
    "RequestCache",
    "cache_key",
    "canonical_body",
    "default_cache_dir",
    "normalize_endpoint",
]

# Body fields that change how a reply is delivered or labelled, never what it says:
# `stream`/`stream_options` (a streamed reply is reassembled into the same completion) and
# `metadata` (the caller's own bookkeeping, e.g. a row id, which the model does not read).
# Everything else is kept, even hints like `prompt_cache_key`: a wrong hit serves the
# wrong answer, a needless miss only costs a request.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "metadata"})
# Bumped when the key or the entry format changes; old entries then live in another folder.
FORMAT = "v1"
MAGIC = b"batchrun-cache-" + FORMAT.encode()
TEMP_PREFIX = ".tmp-"
READ_BYTES = 1 << 16  # one read for an entry under this size (a usual reply is ~1 KB)
_KEY = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CACHE_HOME/batchrun`, or `~/.cache/batchrun` (XDG says to ignore a relative
    XDG_CACHE_HOME). The same on every OS: no platformdirs for one path."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "batchrun"


def canonical_body(body: Mapping[str, Any]) -> bytes:
    """The request as the cache sees it: IGNORED_FIELDS dropped, keys sorted, whole-number
    floats as ints (1.0 and 1 are the same JSON number), compact UTF-8 JSON."""
    kept = {name: value for name, value in body.items() if name not in IGNORED_FIELDS}
    return _dumps(_whole_floats_as_ints(kept))


@functools.lru_cache(maxsize=64)  # one or two endpoints a run, asked for on every request
def normalize_endpoint(url: str) -> str:
    """`url` reduced to what names the server: scheme and host lowercased, default port,
    credentials and trailing slashes dropped. Two spellings of one URL share entries."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}{query}"


def cache_key(body: Mapping[str, Any], endpoint: str) -> str:
    """The entry name of a request (64 hex digits). The endpoint is part of it: the same
    body sent to another server (a local vLLM, another gateway) is another answer. The API
    key is not: it picks who pays, not what the model says, and never reaches disk."""
    digest = hashlib.sha256(MAGIC)
    digest.update(b"\n" + normalize_endpoint(endpoint).encode() + b"\n")
    digest.update(canonical_body(body))
    return digest.hexdigest()


def _whole_floats_as_ints(value: Any) -> Any:
    if type(value) is str:  # most leaves of a body: leave before the other tests
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _whole_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_whole_floats_as_ints(v) for v in value]
    return value


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an int beyond 64 bits (1e300 as an int): rare, slower
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "surrogatepass")  # lone surrogates, if a caller has any


def _is_completion(reply: object) -> bool:
    """A usable completion (README: a `choices` list of objects with a `message` object,
    none finished with "error"): the only thing the cache stores."""
    if not isinstance(reply, Mapping):
        return False
    choices = reply.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(
            isinstance(c, dict)
            and isinstance(c.get("message"), dict)
            and c.get("finish_reason") != "error"
            for c in choices
        )
    )


def _header(key: str, payload: bytes) -> bytes:
    checksum = hashlib.sha256(payload).hexdigest()
    return b"%s %s %d %s\n" % (MAGIC, key.encode(), len(payload), checksum.encode())


def _verified(data: bytes, key: str) -> dict[str, Any] | None:
    """The reply in an entry's bytes if the header matches them whole, else None: a torn,
    truncated, misfiled or bit-flipped entry is never served."""
    header, newline, payload = data.partition(b"\n")
    if not newline or header != _header(key, payload)[:-1]:
        return None
    try:
        reply = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return reply if _is_completion(reply) else None


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """What is in a cache directory; `partial` counts temp files of interrupted writers."""

    directory: Path
    entries: int
    bytes: int
    partial: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "entries": self.entries,
            "bytes": self.bytes,
            "partial": self.partial,
        }


class RequestCache:
    """A directory of replies, one file per request key, sharded by the key's first byte.

    Writes go to a temp file in the entry's own folder, are fsynced, then renamed over the
    entry (os.replace is atomic): readers see the old file or the new one, never half of
    one, whatever another process does or however it dies. Reads check a header (format,
    key, length, SHA-256 of the reply) and treat anything else as a miss, so no lock is
    needed. Every call is a few small-file syscalls and never raises for I/O: a cache that
    cannot be read or written is a miss. Blocking (put fsyncs): async callers run them
    in a worker thread (anyio.to_thread.run_sync); see benchmarks/cache_io.py.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._root = directory / FORMAT
        self._root_name = os.fspath(self._root)  # get() builds names with os.path, not Path

    @classmethod
    def open(cls, directory: Path | None = None) -> RequestCache:
        """A cache at `directory` (default: default_cache_dir()), created if missing
        (mode 0700: replies can be as private as prompts). Unusable -> ConfigError."""
        cache = cls(directory if directory is not None else default_cache_dir())
        try:
            cache._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use cache directory {cache.directory}: {exc}") from exc
        return cache

    def path(self, key: str) -> Path:
        """Where the entry for `key` lives."""
        return Path(self._name(key))

    def _name(self, key: str) -> str:
        # A string, not a Path: get() runs once per line of a cached run, and building a
        # Path costs more than reading a small file's name should (~18 us of ~80 us).
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a cache key: {key!r}")
        return os.path.join(self._root_name, key[:2], key)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored reply for `key`, or None. A bad entry is removed (and is a miss)."""
        path = self._name(key)
        # os.open/os.read, not open(): a file object costs more system calls and
        # allocations than reading a small entry does (~23 us against ~9 us).
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            reply = _verified(_read_whole(fd), key)
            # Only a bad entry needs its inode (see _discard).
            inode = None if reply is not None else os.fstat(fd).st_ino
        except OSError:
            return None
        finally:
            os.close(fd)
        if inode is not None:
            _discard(path, inode)
        return reply

    def put(self, key: str, reply: Mapping[str, Any] | bytes) -> bool:
        """Store a successful reply (a parsed completion or its JSON bytes). Anything that
        is not a usable completion (an error body, `finish_reason: "error"`) is refused:
        errors are never cached. False when refused or when the disk would not take it."""
        try:
            if isinstance(reply, bytes):
                payload, usable = reply, _is_completion(orjson.loads(reply))
            else:
                payload, usable = orjson.dumps(reply), _is_completion(reply)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError):
            return False
        if not usable:
            return False
        path = self.path(key)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_atomic(path, _header(key, payload) + payload)
        except OSError:
            return False
        return True

    def info(self) -> CacheInfo:
        """Entries, their bytes, and leftover temp files (nothing is created)."""
        entries = size = partial = 0
        for file in self._files():
            if file.name.startswith(TEMP_PREFIX):
                partial += 1
                continue
            with contextlib.suppress(OSError):
                size += file.stat().st_size
                entries += 1
        return CacheInfo(self.directory, entries, size, partial)

    def clear(self) -> int:
        """Remove every entry and temp file (only files named like ours; other files and
        folders are left alone). Returns how many entries were removed."""
        removed = 0
        for file in self._files():
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
                removed += not file.name.startswith(TEMP_PREFIX)
        for folder in (*self._shards(), self._root):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        return removed

    def _shards(self) -> Iterator[Path]:
        try:
            folders = list(self._root.iterdir())
        except OSError:
            return
        yield from (f for f in folders if _SHARD.fullmatch(f.name) and f.is_dir())

    def _files(self) -> Iterator[Path]:
        for shard in self._shards():
            with contextlib.suppress(OSError):
                for file in list(shard.iterdir()):
                    if _KEY.fullmatch(file.name) or file.name.startswith(TEMP_PREFIX):
                        yield file


def _write_atomic(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # The data must be on disk before the name points at it; without this a crash
            # of the machine could leave the name on an empty file (the checksum would
            # still refuse it, but as a miss).
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _read_whole(fd: int) -> bytes:
    """A file's bytes, in one read when it is smaller than READ_BYTES (entries are).
    An entry never changes once named (writes replace it), so a short read is its end."""
    data = os.read(fd, READ_BYTES)
    if len(data) < READ_BYTES:
        return data
    chunks = [data]
    while chunk := os.read(fd, READ_BYTES):
        chunks.append(chunk)
    return b"".join(chunks)


def _discard(path: str, inode: int) -> None:
    """Remove a bad entry, unless another process has replaced it since it was read (a
    remaining race can only delete a good entry: a later miss, never a wrong answer)."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)
