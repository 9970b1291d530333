"""The command line's shared behaviour (cli.py run_parsed): Ctrl-C, -v logging, --no-progress."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

import pytest

from salient_background.cli import run_parsed

def _python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (logging and import hooks are process-wide)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_ctrl_c_is_one_line_and_exit_code_130(capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    try:
        code = run_parsed(argparse.Namespace(verbose=False, func=interrupted))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped run_parsed (a traceback for the user)")
    assert code == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted; rerun the same command to resume"


def test_verbose_shows_our_debug_lines_but_not_pils(tmp_path):
    done = _python(f"""
        import argparse, logging, sys
        import numpy as np
        from PIL import Image
        from salient_background.cli import run_parsed

        Image.fromarray(np.zeros((4, 4), np.uint8)).save({str(tmp_path / "x.png")!r})

        def command(args):
            logging.getLogger("salient_background").debug("our debug line")
            Image.open({str(tmp_path / "x.png")!r}).load()  # PIL logs every PNG chunk at DEBUG
            logging.getLogger("urllib3.connectionpool").debug("third-party debug line")
            return 0

        sys.exit(run_parsed(argparse.Namespace(verbose=True, func=command)))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["DEBUG our debug line"]


def test_no_progress_switches_off_the_libraries_loading_bars():
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    done = _python("""
        import argparse, sys
        import huggingface_hub.utils  # already imported: switched off at once
        from salient_background.cli import run_parsed

        def command(args):
            import salient_background.models.generation.pipeline  # imports diffusers: switched off there
            import diffusers.utils.logging as d
            import transformers.utils.logging as t  # imported later: reads the setting on import
            print(d.is_progress_bar_enabled(), t.is_progress_bar_enabled(),
                  huggingface_hub.utils.are_progress_bars_disabled())
            return 0

        sys.exit(run_parsed(argparse.Namespace(verbose=False, no_progress=True, func=command)))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]


def test_sigterm_stops_a_command_as_ctrl_c_does():
    """SIGTERM (torchrun's, a scheduler's, kill's) ends like Ctrl-C: one line, exit code 130, and the command's own
    cleanup runs (the default would kill it mid-write)."""
    done = _python("""
        import argparse, os, signal, sys, time
        from salient_background.cli import run_parsed

        def command(args):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            finally:
                print("cleaned up")
            return 0

        sys.exit(run_parsed(argparse.Namespace(verbose=False, func=command)))
    """)
    assert done.returncode == 130, done.stderr
    assert done.stdout.strip() == "cleaned up"
    assert done.stderr.strip() == "interrupted; rerun the same command to resume"
