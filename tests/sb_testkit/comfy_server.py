"""A real, headless ComfyUI server with the pack loaded from outside its tree (the integration harness's server).

``tests/integration/conftest.py`` starts one per test session (fixture ``comfy``); ``benchmarks/soak_comfyui.py``
starts one for the long soak. The server gets its own port on 127.0.0.1, temporary input/output/temp/user folders,
an in-memory database and an ``extra_model_paths`` YAML that

* loads the pack through ``custom_nodes:`` naming the folder that *contains* the repository (so it is imported
  from outside ComfyUI's tree, under whatever name the clone has), plus :data:`PROBE_NODES_DIR`, a test-only
  extension that answers ``GET /sb_test/probe`` from inside the server process (see ``comfy_probe_nodes/``), and
* points every model folder the pack uses at a per-session temporary ``models`` folder that tests fill with
  random-weight files (``server.models_dir / "salient"`` ...).

Helpers: ``object_info()``, ``post_prompt(api_prompt) -> prompt_id``, ``wait_for_history(prompt_id, timeout) ->
outputs`` (raises :class:`ComfyRunError` with the node errors or the execution error text), ``run(api_prompt)``
(both), ``get_json(path)``, ``log_text()``, ``rss_bytes()``, ``interrupt()``, ``probe()``.
The server is stopped by its own process id (``stop()``).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]  # the repository root is the pack
PROBE_NODES_DIR = Path(__file__).resolve().parent / "comfy_probe_nodes"
STARTUP_TIMEOUT = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "240"))

# Model folders the pack reads (nodes register them; the YAML points them into the session's tmp models dir).
MODEL_FOLDERS = ["salient", "sams", "controlnet", "checkpoints", "diffusers", "vae", "text_encoders"]


class ComfyRunError(AssertionError):
    """A prompt was rejected (HTTP 400 with node_errors) or failed while executing."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, root: Path, python: str, work: Path, extra_custom_nodes: tuple[Path, ...] = (PROBE_NODES_DIR,)):
        self.root = root
        self.python = python
        self.work = work
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.models_dir = work / "models"
        self.input_dir = work / "input"
        self.output_dir = work / "output"
        self.temp_dir = work / "temp"
        self.user_dir = work / "user"
        self.log_path = work / "comfyui.log"
        self.yaml_path = work / "extra_model_paths.yaml"
        self.custom_nodes_dir = PACK_ROOT.parent  # the folder that CONTAINS the clone
        self.extra_custom_nodes = [Path(p) for p in extra_custom_nodes]
        self.pack_module_path = os.path.join(str(self.custom_nodes_dir), PACK_ROOT.name)
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # ------------------------------------------------------------------ lifecycle
    def write_config(self) -> None:
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir):
            d.mkdir(parents=True, exist_ok=True)
        lines = ["salient_background_tests:", f"  base_path: {json.dumps(str(self.work))}",
                 "  custom_nodes: |", *(f"    {p}" for p in [self.custom_nodes_dir, *self.extra_custom_nodes])]
        for folder in MODEL_FOLDERS:
            (self.models_dir / folder).mkdir(parents=True, exist_ok=True)
            if folder == "salient":  # two paths in one multi-line value, as extra_model_paths.yaml allows
                (self.models_dir / "salient_more").mkdir(parents=True, exist_ok=True)
                lines.append("  salient: |\n    models/salient\n    models/salient_more")
            else:
                lines.append(f"  {folder}: models/{folder}")
        self.yaml_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.write_config()
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--extra-model-paths-config", str(self.yaml_path),
               "--input-directory", str(self.input_dir), "--output-directory", str(self.output_dir),
               "--temp-directory", str(self.temp_dir), "--user-directory", str(self.user_dir),
               "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(self.root), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} during startup "
                                   f"({' '.join(cmd)}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/object_info", timeout=10) as resp:
                    if resp.status == 200:
                        self._object_info = json.loads(resp.read())
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ComfyUI did not serve /object_info within {STARTUP_TIMEOUT:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to this process id only
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ------------------------------------------------------------------ log
    def log_text(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def pack_import_lines(self) -> list[str]:
        """The lines of ComfyUI's 'Import times for custom nodes' table that name this pack."""
        return [line for line in self.log_text().splitlines()
                if "seconds" in line and line.rstrip().endswith(self.pack_module_path)]

    # ------------------------------------------------------------------ HTTP
    def _request(self, path: str, payload=None, timeout: float = 60):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base_url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body)
            except ValueError:
                return exc.code, body.decode(errors="replace")

    def get_json(self, path: str, timeout: float = 60):
        status, body = self._request(path, timeout=timeout)
        if status != 200:
            raise AssertionError(f"GET {path} answered HTTP {status}: {body}")
        return body

    def object_info(self, node_type: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{node_type}" if node_type else ""))

    def post_prompt(self, api_prompt: dict) -> str:
        status, body = self._request("/prompt", {"prompt": api_prompt, "client_id": "salient-bg-tests"})
        if status != 200:
            raise ComfyRunError(f"/prompt rejected the prompt (HTTP {status}): "
                                f"error={json.dumps(body.get('error') if isinstance(body, dict) else body, indent=1)} "
                                f"node_errors={json.dumps(body.get('node_errors') if isinstance(body, dict) else None, indent=1)}")
        if body.get("node_errors"):
            raise ComfyRunError(f"/prompt accepted the prompt with node_errors: {json.dumps(body['node_errors'], indent=1)}")
        return body["prompt_id"]

    def wait_for_history(self, prompt_id: str, timeout: float = 300) -> dict:
        """Poll /history/<id> until the prompt finished; returns its ``outputs`` ({node_id: {...}})."""
        deadline = time.monotonic() + timeout
        while True:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            status = (entry or {}).get("status") or {}
            if entry and (status.get("completed") or status.get("status_str") in ("success", "error")):
                if status.get("status_str") == "error" or not status.get("completed", False):
                    raise ComfyRunError(self._execution_error_text(prompt_id, status))
                return entry.get("outputs", {})
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyRunError(f"ComfyUI died (exit {self.proc.returncode}) while running {prompt_id}:\n"
                                    f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ComfyRunError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def _execution_error_text(self, prompt_id: str, status: dict) -> str:
        parts = [f"prompt {prompt_id} failed ({status.get('status_str')})"]
        for event, data in status.get("messages", []):
            if event in ("execution_error", "execution_interrupted"):
                parts.append(f"{event} in node {data.get('node_id')} ({data.get('node_type')}): "
                             f"{data.get('exception_type')}: {data.get('exception_message')}")
                tb = data.get("traceback")
                if tb:
                    parts.append("".join(tb) if isinstance(tb, list) else str(tb))
        return "\n".join(parts)

    def run(self, api_prompt: dict, timeout: float = 300) -> dict:
        return self.wait_for_history(self.post_prompt(api_prompt), timeout=timeout)

    def output_files(self, outputs: dict, node_id: str, kind: str = "images") -> list[Path]:
        """Paths of the files a SaveImage-like node reported in ``outputs``."""
        base = {"output": self.output_dir, "temp": self.temp_dir / "temp",  # ComfyUI joins "temp" onto --temp-directory
                "input": self.input_dir}
        return [base[item.get("type", "output")] / item.get("subfolder", "") / item["filename"]
                for item in outputs.get(node_id, {}).get(kind, [])]

    # ------------------------------------------------------------------ soak helpers
    def rss_bytes(self) -> int:
        """Resident memory of the server process (VmRSS in /proc; Linux only)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS line for process {self.proc.pid}")

    def queue_sizes(self) -> tuple[int, int]:
        """(running, pending) prompts in ComfyUI's queue."""
        queue = self.get_json("/queue")
        return len(queue.get("queue_running", [])), len(queue.get("queue_pending", []))

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: what the UI's cancel button sends (stops the running prompt; only if it is
        ``prompt_id`` when given)."""
        status, body = self._request("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        if status != 200:
            raise AssertionError(f"POST /interrupt answered HTTP {status}: {body}")

    def history_entry(self, prompt_id: str, timeout: float = 60) -> dict | None:
        history = self.get_json(f"/history/{prompt_id}", timeout=timeout)
        return history.get(prompt_id) if isinstance(history, dict) else None

    def probe(self, classes: tuple[str, ...] = (), trim: bool = False) -> dict:
        """What the in-process probe reports: the pack's model caches, ComfyUI's loaded models and the number of
        live ``torch.nn.Module`` objects of each class named in ``classes``; with ``trim``, the server's RSS before
        and after the allocator returns its free memory (see comfy_probe_nodes/)."""
        return self.get_json("/sb_test/probe?classes=" + ",".join(classes) + ("&trim=1" if trim else ""), timeout=300)
