"""Writing a file so that readers (and a run resumed after a kill) see the old file or the whole new one.

The temporary file is ``.<name>.sbtmp.<host>.<pid>.<thread>.tmp`` beside the target. A writer killed outright
(SIGKILL, a machine's crash) leaves it behind; :func:`remove_stale_temporaries` removes such leftovers on the next
run: only files with that pattern, only those of this machine whose writing process no longer exists.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from typing import Callable, Iterable

MARK = ".sbtmp."  # between the target's name and the writer's host, pid and thread
SUFFIX = ".tmp"


def temporary_name(path: str) -> str:
    """A hidden name beside ``path``, unique per machine, process and thread (several write to one shared folder)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{MARK}{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}{SUFFIX}")


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(temporary_path)`` then rename onto ``path``: ``path`` holds the old file or the whole new one."""
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a writer that got a file object (PIL's save) says not which file: name it
            exc.filename = path
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomically(path: str, data) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")

    write_atomically(path, write)


def write_bytes_if_changed(path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` atomically unless the file already holds exactly these bytes (then it keeps its
    mtime: a rerun that changed nothing leaves the folder as it was). True when written."""
    try:
        with open(path, "rb") as fh:
            if fh.read() == data:
                return False
    except OSError:
        pass

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)

    write_atomically(path, write)
    return True


def write_json_if_changed(path: str, data) -> bool:
    """:func:`write_json_atomically`'s bytes, written only when they differ from the file's."""
    return write_bytes_if_changed(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def writer_of(file_name: str):
    """(host, pid) of the writer of one of our temporary files, or None for any other name."""
    if not (file_name.startswith(".") and file_name.endswith(SUFFIX) and MARK in file_name):
        return None
    parts = file_name[: -len(SUFFIX)].rsplit(MARK, 1)[1].rsplit(".", 2)
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return parts[0], int(parts[1])


def process_exists(pid: int) -> bool:
    try:
        import psutil  # installed with accelerate; safe on Windows, where os.kill(pid, 0) would end the process
    except ImportError:
        if os.name != "posix":
            return True  # cannot tell: keep the file
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return psutil.pid_exists(pid)


def remove_stale_temporaries(folders: Iterable[str], recursive: bool = True) -> list[str]:
    """Remove the temporary files that dead writers of this machine left in ``folders`` (and below them when
    ``recursive``); a file of a live process, of another machine or of any other program stays. Returns the paths
    removed."""
    host, removed = socket.gethostname(), []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        walk = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
        for root, _, names in walk:
            for name in names:
                writer = writer_of(name)
                if writer is None or writer[0] != host or writer[1] == os.getpid() or process_exists(writer[1]):
                    continue
                try:
                    os.remove(os.path.join(root, name))
                    removed.append(os.path.join(root, name))
                except FileNotFoundError:
                    pass
    return removed
