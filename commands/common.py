"""Small helpers every command shares: output folders, and running over many items in one or several processes."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from ..models.errors import InputError

log = logging.getLogger("salient_background")


def ensure_output_dir(path: str, what: str = "output folder") -> str:
    """Create ``path`` (and its parents) as a folder and return its absolute path.

    A path that exists as a file, or a folder that cannot be created, is an :class:`InputError` that names it,
    raised before any heavy work.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"the {what} {path!r} is a file, not a folder: choose another path")
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:  # a parent is a file
        raise InputError(f"cannot create the {what} {path!r}: a part of that path is a file, not a folder") from None
    except OSError as exc:
        raise InputError(f"cannot create the {what} {path!r}: {exc.strerror or exc}") from None
    return path


# ---------------------------------------------------------------------------------------------- runs over many items
def add_run_options(parser, *, batch: bool = True) -> None:
    """The options every batch command shares: resuming, failures, dry run, throughput."""
    group = parser.add_argument_group("large batches (see the README's 'Large batches')")
    group.add_argument("--retry-failed", action="store_true",
                       help="try again the items an earlier run recorded as failed (default: skip them and say so)")
    group.add_argument("--dry-run", action="store_true",
                       help="list the items and what is already done, then stop (no model is loaded)")
    group.add_argument("--io-threads", type=int, default=2,
                       help="threads that read the next files and write finished ones while the model runs (default 2)")
    if batch:
        group.add_argument("--batch-size", type=int, default=1, help="items per forward pass (default 1)")


def check_run_options(args) -> None:
    if getattr(args, "batch_size", 1) < 1:
        raise InputError("--batch-size must be at least 1")
    if args.io_threads < 1:
        raise InputError("--io-threads must be at least 1")


@dataclass
class SharedRun:
    stats: object  # models.runs.engine.RunStats of this process


def run_shared_part(ranks, journal, works: list, *, key, total: int, unit: str, desc: str, args, make_runner,
                    journal_for=None, record_key=None, describe=None, already: int = 0) -> SharedRun:
    """Every process does the works it owns (``ranks.owns(key(work))``) and records each in ``journal``; returns
    once every process is done (the main process may then merge the records).

    ``journal`` also holds the progress counters; ``journal_for(work)`` / ``record_key(work)`` say where a work's
    record goes when that is not ``journal`` / ``key(work)``; ``describe(work)`` names it in messages (default: its
    ``source``). ``total`` counts the whole job's units, ``already`` those an earlier run did (the bar starts there).
    ``make_runner(mine, progress)`` loads the models (only when this process owns work) and returns an object with
    ``load``, ``compute``, ``save`` (see :func:`models.runs.engine.run_items`) and ``failure_record(work, reason)``.
    The bar appears once the models are loaded.
    """
    from ..models.runs.engine import RunProgress, RunStats, run_items

    if ranks.is_main:
        journal.clear_progress()
    ranks.barrier()  # every process has read the folder before any writes a record
    mine = [work for work in works if ranks.owns(key(work))]
    progress = RunProgress(ranks, journal, total + already, unit, desc, disable=args.no_progress, initial=already)
    stats = RunStats()
    try:
        runner = None
        if mine:
            if not ranks.is_main:  # the libraries' loading bars would cut through the main process's bar
                from ..models.library_progress import disable_library_progress_bars

                disable_library_progress_bars()
            runner = make_runner(mine, progress)
        progress.start()
        if runner is not None:

            def finish(work, record, failure):
                if failure is not None:
                    log.error("skipped %s: %s", (describe or (lambda w: w.source))(work), failure)
                    record = runner.failure_record(work, failure)
                (journal_for or (lambda _: journal))(work).write((record_key or key)(work), record)

            stats = run_items(mine, load=runner.load, compute=runner.compute, save=runner.save, finish=finish,
                              batch_size=getattr(args, "batch_size", 1), io_threads=args.io_threads)
        if stats.wall_seconds:
            log.debug("%s [process %d of %d]: %d item(s) done, %d failed in %.3f s; model busy %.3f s (%.0f %%)", desc,
                      ranks.rank, ranks.world, stats.done, stats.failed, stats.wall_seconds, stats.model_seconds,
                      100 * stats.model_seconds / stats.wall_seconds)
        progress.finish_own()
        ranks.barrier()  # every process is done: the records are complete
    finally:
        progress.close()
    return SharedRun(stats)


def report_failures(command: str, failed: dict, skipped: list) -> None:
    """The items the folder records as failed, one line each with the reason (stderr)."""
    if not failed:
        return
    for entry in (failed[k] for k in sorted(failed)):
        print(f"failed: {entry.get('source') or entry['id']}: {entry['reason']}", file=sys.stderr)
    retry = f"; {len(skipped)} skipped now as failed before" if skipped else ""
    print(f"{command}: {len(failed)} item(s) failed{retry} (rerun with --retry-failed to try them again)",
          file=sys.stderr)


# ---------------------------------------------------------------------------------------------- exit status
EXIT_NEW_FAILURES = 1


def under_launcher() -> bool:
    """True in a process started by torchrun (or accelerate launch, which runs torchrun's agent)."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID"))


def exit_status(command: str, new_failures: int) -> int:
    """0 when this run added no failure (items skipped as failed before do not count), else 1 -- except under
    torchrun, where any non-zero status of a process makes the launcher print a ChildFailedError traceback as for a
    crash: there every process exits 0 and the summary (and the manifest's ``failed`` list) names the failures."""
    if not new_failures:
        return 0
    if under_launcher():
        print(f"{command}: {new_failures} item(s) failed in this run; exit status 0 under torchrun so that the launcher "
              "does not report a crash (the failures are listed above and in the manifest)", file=sys.stderr)
        return 0
    return EXIT_NEW_FAILURES


# ---------------------------------------------------------------------------------------------- output folders
def remove_stale_temporaries(ranks, folders, recursive: bool = True) -> None:
    """The main process removes the temporary files that killed writers left in our output ``folders``
    (:func:`models.runs.atomic.remove_stale_temporaries`: only ours, only of dead processes)."""
    from ..models.runs.atomic import remove_stale_temporaries as remove

    if ranks.is_main:
        for path in remove(folders, recursive=recursive):
            log.debug("removed %s, left by a run that was killed while writing it", path)


def print_dry_run(entries, summary: str) -> None:
    """A dry run's listing: one ``<id>\t<input>\t<status>`` line per item, then the summary line."""
    from ..models.runs.resumable import listing

    for line in listing(entries, summary):
        print(line)
