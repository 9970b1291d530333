"""Writing a file so that readers (and a run resumed after a kill) see the old file or the whole new one."""
from __future__ import annotations

import json
import os
import socket
import threading
from typing import Callable


def temporary_name(path: str) -> str:
    """A hidden name beside ``path``, unique per machine, process and thread (several write to one shared folder)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(temporary_path)`` then rename onto ``path``: ``path`` holds the old file or the whole new one."""
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomically(path: str, data) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")

    write_atomically(path, write)
