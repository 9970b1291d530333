"""``training prepare`` works where ``fcntl`` does not exist (Windows, ComfyUI's portable build) and its
check-and-merge of the processes' parts stays serialised by a file lock."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from filelock import FileLock

from salient_background.training import prepare_state
from salient_background.training.prepare_state import LOCK_FILE, PartWriter, PrepareReport


def test_prepare_imports_without_fcntl():
    code = ("import sys; sys.modules['fcntl'] = None\n"  # `import fcntl` now raises ImportError, as on Windows
            "import salient_background.training.prepare as p, salient_background.training.cli as c\n"
            "print(p.prepare_dataset.__name__)")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "prepare_dataset"


def test_the_merge_waits_for_the_lock(tmp_path, monkeypatch):
    """While another holder has the lock, the last process to finish does not merge; it merges once released."""
    merged = []
    monkeypatch.setattr(prepare_state, "merge_parts", lambda out, name, report: merged.append(time.monotonic()))
    out = str(tmp_path)
    writer = PartWriter(out, rank=0, world=1)
    writer.close()
    holder = FileLock(os.path.join(out, LOCK_FILE))
    holder.acquire()
    worker = threading.Thread(target=writer.finish, args=(out, "manifest.jsonl", PrepareReport(out, "m")))
    worker.start()
    time.sleep(0.5)
    assert merged == [] and worker.is_alive()  # blocked on the lock
    released = time.monotonic()
    holder.release()
    worker.join(timeout=10)
    assert not worker.is_alive() and len(merged) == 1 and merged[0] >= released


def test_two_finishing_processes_never_merge_at_the_same_time(tmp_path, monkeypatch):
    spans, guard = [], threading.Lock()

    def slow_merge(out, name, report):
        start = time.monotonic()
        time.sleep(0.3)
        with guard:
            spans.append((start, time.monotonic()))

    monkeypatch.setattr(prepare_state, "merge_parts", slow_merge)
    out = str(tmp_path)
    writers = [PartWriter(out, rank=r, world=2) for r in (0, 1)]
    for w in writers:
        w.close()
    # both markers exist before either takes the lock: both see "everyone is done" and both merge, one after the other
    for w in writers:
        open(w.done_marker, "w").close()
    threads = [threading.Thread(target=w.finish, args=(out, "manifest.jsonl", PrepareReport(out, "m"))) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(spans) == 2
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0  # the second merge started after the first ended
