"""The opt-in downloader, folder discovery and the model table — against a local HTTP server, no internet."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import glob
import hashlib
import io
import os
import re
import socket
import ssl
import sys
import types
import urllib.error
import urllib.request

import pytest

from salient_background.models.model_files import downloader, model_paths, model_registry
from salient_background.models.errors import CheckpointError, UserFacingError
from salient_background.models.model_files.model_registry import MODEL_FILES, ModelFile
from sb_testkit.local_http import LocalFileServer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: several read chunks
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with LocalFileServer(lifetime=60) as srv:
        srv.files["/files/model.pth"] = PAYLOAD
        yield srv


def make_entry(url, **overrides) -> ModelFile:
    values = dict(
        key="test_model", filename="model.pth", folder="sams", title="test model", urls=(url,), revision=None,
        size=len(PAYLOAD), sha256=SHA, md5=MD5, licence="MIT", approx_size="1 MB", group="test_model",
    )
    values.update(overrides)
    return ModelFile(**values)


def fetch(entry, target, **kw):
    messages = []
    kw.setdefault("progress", False)
    outcome = downloader.download_entry(entry, str(target), log=messages.append, **kw)
    return outcome, messages


# ---------------------------------------------------------------------------------------------- transfers
def test_good_download_lands_with_the_right_checksum(server, tmp_path):
    outcome, _ = fetch(make_entry(server.url("/files/model.pth")), tmp_path)
    final = tmp_path / "model.pth"
    assert outcome.status == "downloaded" and outcome.verified and outcome.path == str(final)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == SHA
    assert not (tmp_path / "model.pth.part").exists()
    assert server.requests == [("/files/model.pth", None)]


def test_subfolder_file_lands_inside_its_subfolder(server, tmp_path):
    entry = make_entry(server.url("/files/model.pth"), filename="photo-background-generation/model.pth")
    outcome, _ = fetch(entry, tmp_path)
    assert outcome.path == str(tmp_path / "photo-background-generation" / "model.pth")
    assert (tmp_path / "photo-background-generation" / "model.pth").read_bytes() == PAYLOAD


def test_connection_dropped_midway_resumes_with_a_range_request(server, tmp_path):
    cut = 300_000
    server.drop_after["/files/model.pth"] = cut
    outcome, messages = fetch(make_entry(server.url("/files/model.pth")), tmp_path)
    assert outcome.status == "downloaded"
    assert (tmp_path / "model.pth").read_bytes() == PAYLOAD
    assert server.requests == [("/files/model.pth", None), ("/files/model.pth", f"bytes={cut}-")]
    assert server.bytes_sent == len(PAYLOAD)  # nothing was fetched twice
    assert any("resuming" in m for m in messages)


def test_resume_survives_a_redirect_like_the_hubs_use(server, tmp_path):
    server.redirects["/resolve/model.pth"] = "/files/model.pth"
    server.drop_after["/files/model.pth"] = 500_000
    fetch(make_entry(server.url("/resolve/model.pth")), tmp_path)
    assert (tmp_path / "model.pth").read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/files/model.pth", "bytes=500000-")  # the Range header followed the redirect


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    (tmp_path / "model.pth.part").write_bytes(PAYLOAD[:123_456])
    fetch(make_entry(server.url("/files/model.pth")), tmp_path)
    assert (tmp_path / "model.pth").read_bytes() == PAYLOAD
    assert server.requests == [("/files/model.pth", "bytes=123456-")]
    assert server.bytes_sent == len(PAYLOAD) - 123_456


def test_host_without_range_support_restarts_from_zero(server, tmp_path):
    server.ignore_range.add("/files/model.pth")
    (tmp_path / "model.pth.part").write_bytes(b"stale bytes that must not survive")
    fetch(make_entry(server.url("/files/model.pth")), tmp_path)
    assert (tmp_path / "model.pth").read_bytes() == PAYLOAD
    assert server.bytes_sent == len(PAYLOAD)


def test_corrupted_download_is_rejected_and_removed(server, tmp_path):
    server.files["/files/model.pth"] = PAYLOAD[:-4] + b"XXXX"  # same size, different bytes
    entry = make_entry(server.url("/files/model.pth"))
    with pytest.raises(downloader.DownloadError) as info:
        fetch(entry, tmp_path)
    message = str(info.value)
    assert "checksum mismatch" in message and SHA in message
    assert f"Manual alternative: download {entry.urls[0]}" in message and str(tmp_path) in message
    assert not (tmp_path / "model.pth").exists() and not (tmp_path / "model.pth.part").exists()


def test_wrong_size_offered_by_the_host_is_refused_before_downloading(server, tmp_path):
    server.files["/files/model.pth"] = PAYLOAD + b"extra"
    with pytest.raises(downloader.DownloadError, match="offers 1048585 bytes but model.pth should be 1048580"):
        fetch(make_entry(server.url("/files/model.pth")), tmp_path)
    assert os.listdir(tmp_path) == []


def test_second_url_is_used_when_the_first_fails(server, tmp_path):
    entry = make_entry(server.url("/missing.pth"), urls=(server.url("/missing.pth"), server.url("/files/model.pth")))
    outcome, _ = fetch(entry, tmp_path)
    assert outcome.status == "downloaded" and (tmp_path / "model.pth").read_bytes() == PAYLOAD


class TlsBreaksMidBody:
    """An opener whose responses from ``broken`` paths raise ``ssl.SSLError`` (errno 1, as a TLS record error does)
    after ``after`` bytes of the body, ``times`` times in all; other responses pass through."""

    def __init__(self, broken: str, after: int, times: int):
        self.inner = urllib.request.build_opener()
        self.broken, self.after, self.times = broken, after, times

    def open(self, request, timeout=None):
        response = self.inner.open(request, timeout=timeout)
        if self.times > 0 and request.full_url.endswith(self.broken):
            self.times -= 1
            read, sent = response.read, [0]

            def broken_read(n=-1):
                if sent[0] >= self.after:
                    raise ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed or bad record mac")
                block = read(min(n, self.after - sent[0]) if n and n > 0 else self.after - sent[0])
                sent[0] += len(block)
                return block

            response.read = broken_read
        return response


def test_tls_error_mid_body_is_a_network_error_retried_with_a_range_request(server, tmp_path):
    opener = TlsBreaksMidBody("/files/model.pth", after=200_000, times=1)
    outcome, messages = fetch(make_entry(server.url("/files/model.pth")), tmp_path, opener=opener)
    assert outcome.status == "downloaded" and (tmp_path / "model.pth").read_bytes() == PAYLOAD
    assert server.requests == [("/files/model.pth", None), ("/files/model.pth", "bytes=200000-")]
    assert any("TLS/SSL error" in m and "resuming" in m for m in messages)
    assert not any("cannot write" in m for m in messages)


def test_tls_error_that_persists_sends_the_download_to_the_mirror(server, tmp_path):
    server.files["/mirror/model.pth"] = PAYLOAD
    opener = TlsBreaksMidBody("/files/model.pth", after=100_000, times=99)
    entry = make_entry(server.url("/files/model.pth"), urls=(server.url("/files/model.pth"), server.url("/mirror/model.pth")))
    outcome, _ = fetch(entry, tmp_path, opener=opener, retries=2)
    assert outcome.status == "downloaded" and (tmp_path / "model.pth").read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/files/model.pth"] * 3 + ["/mirror/model.pth"]
    # and when no URL is left, the message is about the network, not about the folder
    opener = TlsBreaksMidBody("/files/model.pth", after=100_000, times=99)
    (tmp_path / "model.pth").unlink()
    with pytest.raises(downloader.DownloadError) as info:
        fetch(make_entry(server.url("/files/model.pth")), tmp_path, opener=opener, retries=1)
    assert "TLS/SSL error" in str(info.value) and "cannot write" not in str(info.value)
    assert "choose a writable folder" not in str(info.value).lower()


def test_existing_good_file_is_not_fetched_again(server, tmp_path):
    (tmp_path / "model.pth").write_bytes(PAYLOAD)
    outcome, _ = fetch(make_entry(server.url("/files/model.pth")), tmp_path)
    assert outcome.status == "present" and outcome.verified
    assert server.requests == []


def test_existing_corrupt_file_is_reported_not_overwritten(server, tmp_path):
    (tmp_path / "model.pth").write_bytes(b"not the model")
    with pytest.raises(downloader.DownloadError, match="does not match the published file .*delete it"):
        fetch(make_entry(server.url("/files/model.pth")), tmp_path)
    assert (tmp_path / "model.pth").read_bytes() == b"not the model"
    assert server.requests == []


def test_file_without_published_checksum_downloads_as_unverified(server, tmp_path):
    entry = make_entry(server.url("/files/model.pth"), sha256=None, md5=None, size=None)
    outcome, messages = fetch(entry, tmp_path)
    assert outcome.status == "downloaded" and not outcome.verified and "unverified" in outcome.note
    assert any("no published checksum" in m for m in messages)


def test_http_error_is_explained_with_the_manual_alternative(server, tmp_path):
    server.status["/files/model.pth"] = 403
    entry = make_entry(server.url("/files/model.pth"))
    with pytest.raises(downloader.DownloadError) as info:
        fetch(entry, tmp_path)
    assert "HTTP 403" in str(info.value) and "refused access" in str(info.value)
    assert str(info.value).rstrip().endswith(os.path.join(str(tmp_path), "model.pth") + ".")


def test_unreachable_host_is_explained(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    entry = make_entry(f"http://127.0.0.1:{port}/model.pth")
    with pytest.raises(downloader.DownloadError, match="refused.*Manual alternative"):
        fetch(entry, tmp_path, timeout=5)


def test_no_network_and_proxy_explanations(monkeypatch):
    url = "https://example.org/x.pth"
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    text = downloader._explain(urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")), url)
    assert text.startswith("no network") and "HTTPS_PROXY" in text
    monkeypatch.setenv("https_proxy", "http://proxy.local:3128")
    text = downloader._explain(urllib.error.URLError(socket.gaierror(-3, "x")), url)
    assert "proxy http://proxy.local:3128" in text
    err407 = urllib.error.HTTPError(url, 407, "Proxy Authentication Required", {}, io.BytesIO())
    assert "needs credentials" in downloader._explain(err407, url)


def test_disk_full_before_and_during_the_transfer(server, tmp_path, monkeypatch):
    huge = make_entry(server.url("/files/model.pth"), size=10**18)
    with pytest.raises(downloader.DownloadError, match="not enough disk space.*Manual alternative"):
        fetch(huge, tmp_path)
    assert server.requests == []

    class FullDisk(io.RawIOBase):
        def __init__(self, *args, **kwargs):
            pass

        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(downloader, "open", FullDisk, raising=False)
    with pytest.raises(downloader.DownloadError, match="disk full while writing into"):
        fetch(make_entry(server.url("/files/model.pth")), tmp_path)
    assert not (tmp_path / "model.pth").exists()


# ---------------------------------------------------------------------------------------------- folder discovery
def _comfy_tree(tmp_path):
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("")
    pack = root / "custom_nodes" / "ComfyUI-Salient-Background"
    (pack / "models").mkdir(parents=True)
    return root, pack


def test_comfyui_tree_around_the_pack_is_found(tmp_path):
    root, pack = _comfy_tree(tmp_path)
    assert model_paths.find_comfyui_root(str(pack)) == str(root)
    locations = model_paths.discover(pack_root=str(pack), use_env=False)
    assert locations.target("sams") == str(root / "models" / "sams")
    assert locations.target("checkpoints") == str(root / "models" / "checkpoints")
    assert model_paths.find_comfyui_root(str(tmp_path / "elsewhere")) is None


EXTRA_YAML = """\
# comments are fine
a111:
    base_path: ../sd-webui/   # relative to this file
    checkpoints: models/Stable-diffusion
    controlnet: models/ControlNet
    sams: |
         models/sam
         extensions/sam/models
mine:
    base_path: {base}
    is_default: true
    salient: salient_models
    sams: sams
loose:
    sams: /abs/sams
    salient: rel/salient
empty:
"""


def test_extra_model_paths_yaml_is_honoured(tmp_path):
    root, pack = _comfy_tree(tmp_path)
    base = tmp_path / "central"
    (root / "extra_model_paths.yaml").write_text(EXTRA_YAML.format(base=base))
    locations = model_paths.discover(pack_root=str(pack), use_env=False)
    webui = tmp_path / "sd-webui"
    # is_default folders come first (and receive downloads), then ComfyUI's own, then the others in file order
    assert locations.paths("sams") == [
        str(base / "sams"), str(root / "models" / "sams"), str(webui / "models" / "sam"),
        str(webui / "extensions" / "sam" / "models"), "/abs/sams",
    ]
    assert locations.paths("salient") == [
        str(base / "salient_models"), str(root / "models" / "salient"), str(root / "rel" / "salient"),
    ]
    assert locations.paths("controlnet") == [str(root / "models" / "controlnet"), str(webui / "models" / "ControlNet")]
    assert locations.target("sams") == str(base / "sams")


def test_existing_file_in_any_listed_folder_counts_as_present(server, tmp_path):
    root, pack = _comfy_tree(tmp_path)
    other = tmp_path / "shared_sams"
    other.mkdir()
    (other / "model.pth").write_bytes(PAYLOAD)
    extra = tmp_path / "paths.yaml"
    extra.write_text(f"shared:\n    sams: {other}\n")
    locations = model_paths.discover(pack_root=str(pack), extra_configs=[str(extra)], use_env=False)
    (outcome,) = downloader.ensure([make_entry(server.url("/files/model.pth"))], locations, progress=False)
    assert outcome.status == "present" and outcome.path == str(other / "model.pth")
    assert server.requests == []


def test_models_dir_and_nothing_found(tmp_path):
    locations = model_paths.discover(str(tmp_path / "m"))
    assert locations.paths("sams") == [str(tmp_path / "m" / "sams")]
    with pytest.raises(UserFacingError, match="--models-dir"):
        model_paths.discover(pack_root=str(tmp_path / "nowhere"), use_env=False)


# ---------------------------------------------------------------------------------------------- the table
def test_table_values_are_well_formed_and_self_consistent():
    keys = [m.key for m in MODEL_FILES]
    assert len(keys) == len(set(keys))
    targets = [(m.folder, m.filename) for m in MODEL_FILES]
    assert len(targets) == len(set(targets))
    for m in MODEL_FILES:
        assert m.folder in model_registry.FOLDER_DEFAULT_SUBDIRS
        assert m.urls and all(u.startswith("https://") for u in m.urls)
        assert m.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", m.sha256)
        assert m.md5 is None or re.fullmatch(r"[0-9a-f]{32}", m.md5)
        if m.revision and "huggingface.co" in m.urls[0]:
            assert all("/resolve/" in u for u in m.urls) and m.revision in m.urls[0]
        assert m.licence
    # Meta names each SAM file after the first digits of its md5: the recorded md5s agree with the URLs
    for m in MODEL_FILES:
        if m.folder == "sams":
            assert m.filename.endswith(f"_{m.md5[:6]}.pth") and m.urls[0].endswith(m.filename)
    wanted = {m.basename for m in MODEL_FILES}
    assert {"512-inpainting-ema.safetensors", "config.json", "diffusion_pytorch_model.safetensors", "ckpt_base.pth",
            "ckpt_fast.pth", "sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth"} <= wanted


def test_selection_names():
    names = lambda *a: [m.key for m in model_registry.select(list(a))]  # noqa: E731
    assert names() == ["sd2_inpainting", "controlnet_config", "controlnet_weights", "inspyrenet_base",
                       "inspyrenet_fast", "sam_vit_b"]
    assert names("generate") == [m.key for m in MODEL_FILES if m.group == "si2_diffusers"] + [
        "controlnet_config", "controlnet_weights", "inspyrenet_base", "sam_vit_b"]
    assert names("sam") == ["sam_vit_b"] and names("vit-h") == ["sam_vit_h"]
    assert names("controlnet") == ["controlnet_config", "controlnet_weights"]
    assert names("all") == [m.key for m in MODEL_FILES]
    assert names("sd15") == ["sd15_inpainting"]
    assert [m.filename.split("/", 1)[1] for m in model_registry.select(["sdxl"])][:3] == [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert {m.licence for m in model_registry.select(["sd15", "sd15-diffusers"])} == {"CreativeML OpenRAIL-M"}
    with pytest.raises(UserFacingError, match="unknown model name"):
        model_registry.select(["sam_vit_x"])


def _registered_folders() -> dict[str, str]:
    """The model folders the nodes add to ComfyUI (nodes/comfy_glue.py registers them, one function for all)."""
    from salient_background.nodes import comfy_glue

    return {name: model_registry.FOLDER_DEFAULT_SUBDIRS.get(name) for name in comfy_glue.PACK_MODEL_FOLDERS}


def test_table_covers_every_model_folder_the_nodes_register():
    for name, subdir in _registered_folders().items():
        if name in model_registry.NO_PUBLISHED_FILES:
            continue
        assert any(m.folder == name for m in MODEL_FILES), (
            f"the nodes register the model folder '{name}' but models/model_files/model_registry.py has no file for it: add the "
            "published file(s), or list the folder in NO_PUBLISHED_FILES with the reason"
        )
        assert model_registry.FOLDER_DEFAULT_SUBDIRS.get(name) == subdir, (
            f"'{name}' is registered as models/{subdir} but the registry downloads into "
            f"models/{model_registry.FOLDER_DEFAULT_SUBDIRS.get(name)}"
        )
    # and every folder the table uses is either registered by a node or a ComfyUI core folder
    core = {"checkpoints", "controlnet", "diffusers"}  # ComfyUI registers these itself
    command_line_only = {"metrics"}  # the image-quality metrics' models: read by the command line, no node
    assert {m.folder for m in MODEL_FILES} <= set(_registered_folders()) | core | {"salient", "sams"} | command_line_only


def test_table_covers_every_variant_the_loaders_accept():
    from salient_background.models.networks.sam import loading as sam_loading

    variants = getattr(sam_loading, "OFFICIAL_VARIANTS", None)
    assert variants, "models/networks/sam/loading.py no longer lists OFFICIAL_VARIANTS: update this test"
    for variant in variants:
        assert f"sam_{variant}" in model_registry.BY_KEY, f"SAM {variant} is accepted but has no download entry"
    # the salient node's modes map to InSPyReNet checkpoints
    text = open(os.path.join(REPO_ROOT, "nodes", "salient_nodes.py"), encoding="utf-8").read()
    modes = re.search(r'"mode":\s*\(\[([^\]]*)\]', text)
    assert modes, "salient node mode list not found: update this test"
    for mode in re.findall(r'"(\w+)"', modes.group(1)):
        assert model_registry.BY_KEY[f"inspyrenet_{mode}"].filename == f"ckpt_{mode}.pth"


def test_readme_models_table_is_generated_from_the_registry():
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("<!-- section: models -->", 1)[1].split("<!-- /section: models -->", 1)[0]
    assert model_registry.render_markdown_table() in section, (
        "README models table is stale: replace it with the output of "
        "`python -m salient_background download --markdown`"
    )


# ---------------------------------------------------------------------------------------------- messages, nodes
def test_missing_model_message_names_file_folders_and_command():
    text = downloader.missing_model_message("sam_vit_b_01ec64.pth", ["/c/models/sams", "/x/sams"])
    assert "sam_vit_b_01ec64.pth" in text and "/c/models/sams, /x/sams" in text
    assert "python -m salient_background download sam-vit-b" in text
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in text
    text = downloader.missing_model_message("photo-background-generation", ["/c/models/controlnet"])
    assert "download controlnet " in text and "config.json" in text
    text = downloader.missing_model_message("my_own.pth", ["/c/models/sams"])
    assert "not one of the pack's published files" in text and "/c/models/sams" in text


def _pack_sources():
    paths = [os.path.join(REPO_ROOT, "cli.py"), os.path.join(REPO_ROOT, "README.md")]
    for folder in ("models", "nodes", "commands", "workflows", "training"):
        paths += glob.glob(os.path.join(REPO_ROOT, folder, "**", "*.py"), recursive=True)
    return {os.path.relpath(p, REPO_ROOT): open(p, encoding="utf-8").read() for p in paths}


def test_where_to_get_a_file_comes_from_the_registry_only():
    """No published URL is written out anywhere but the registry, and every hint that code builds comes from
    model_registry.where_to_get (the loaders' messages included)."""
    from salient_background.models.networks import controlnet_checkpoint, salient
    from salient_background.models.networks.sam import loading as sam_loading

    hosts = {u.split("/")[2] for m in MODEL_FILES for u in m.urls}
    for path, text in _pack_sources().items():
        if path.endswith(".py") and path != os.path.join("models", "model_files", "model_registry.py"):
            assert not [h for h in hosts if h + "/" in text], f"{path} writes a model URL out by hand"
    assert model_registry.where_to_get("sam") in sam_loading.WHERE_TO_GET
    assert model_registry.where_to_get("controlnet") in controlnet_checkpoint.WHERE_TO_GET
    assert model_registry.where_to_get("inspyrenet") in salient.OFFICIAL_FILES_HINT


def test_download_names_are_spelled_with_dashes_everywhere():
    for path, text in _pack_sources().items():
        for names in re.findall(r"salient_background download((?: [a-z0-9_-]+)+)", text):
            words = [w for w in names.split() if not w.startswith("-")]
            assert not [w for w in words if "_" in w], f"{path}: 'download{names}' (--help spells names with -)"


@pytest.fixture
def fake_comfy_folders(tmp_path, monkeypatch):
    sams = tmp_path / "models" / "sams"
    sams.mkdir(parents=True)
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path / "models")
    fake.folder_names_and_paths = {}  # where the pack registers its folders (ComfyUI's table)
    controlnet = tmp_path / "models" / "controlnet"
    controlnet.mkdir(parents=True)
    fake.get_folder_paths = lambda folder: {"sams": [str(sams)], "controlnet": [str(controlnet)]}.get(folder, [])

    def get_full_path(folder, name):
        for base in fake.get_folder_paths(folder):
            path = os.path.join(base, name)
            if os.path.isfile(path):
                return path
        return None

    fake.get_full_path = get_full_path
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    return sams


def _serve_registry_entry(monkeypatch, server, key="sam_vit_b"):
    served = dataclasses.replace(model_registry.BY_KEY[key], urls=(server.url("/files/model.pth"),),
                                 size=len(PAYLOAD), sha256=SHA, md5=MD5)
    files = tuple(served if m.key == key else m for m in MODEL_FILES)
    monkeypatch.setattr(model_registry, "MODEL_FILES", files)
    monkeypatch.setattr(model_registry, "BY_KEY", {m.key: m for m in files})
    return served


def test_node_missing_file_error_and_opt_in_auto_download(server, fake_comfy_folders, monkeypatch):
    from salient_background.nodes import comfy_glue

    entry = _serve_registry_entry(monkeypatch, server)
    monkeypatch.delenv(downloader.AUTO_DOWNLOAD_ENV, raising=False)
    with pytest.raises(CheckpointError) as info:
        comfy_glue.resolve_model_file("sams", entry.filename, where_to_get="(see README)", registry_key="sam_vit_b")
    text = str(info.value)
    assert str(fake_comfy_folders) in text
    assert f"download sam-vit-b --models-dir {fake_comfy_folders.parent}" in text
    # the registry's hint once: the caller's own hint is not appended to a message that already has it
    assert text.count("download sam-vit-b") == 1 and text.count("Manual alternative") == 1
    assert "(see README)" not in text
    assert server.requests == []  # no network without the opt-in

    monkeypatch.setenv(downloader.AUTO_DOWNLOAD_ENV, "1")
    path = comfy_glue.resolve_model_file("sams", entry.filename, where_to_get="", registry_key="sam_vit_b")
    assert path == str(fake_comfy_folders / entry.filename)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == SHA
    # a name that is not ours is never fetched, even with the opt-in
    with pytest.raises(CheckpointError, match="'my_sam.pth' not found"):
        comfy_glue.resolve_model_file("sams", "my_sam.pth", where_to_get="", registry_key="sam_vit_b")
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------------------------- the command
def _run_download(argv):
    from salient_background.commands import download

    parser = argparse.ArgumentParser()
    download.add_parser(parser.add_subparsers())
    args = parser.parse_args(["download", *argv])
    return args.func(args)


def test_dry_run_lists_targets_sizes_and_verification(tmp_path, capsys):
    (tmp_path / "salient").mkdir()
    assert _run_download(["all", "--models-dir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"-> {tmp_path / 'sams' / 'sam_vit_h_4b8939.pth'}" in out and "2.56 GB" in out
    assert f"{tmp_path / 'controlnet' / 'photo-background-generation' / 'config.json'}" in out
    assert "UNVERIFIED (size only)" in out and "verified (sha256+md5+size)" in out
    assert out.count("would fetch") == len(MODEL_FILES)
    assert f"total to fetch: about {sum(m.expected_bytes() or 0 for m in MODEL_FILES) / 1e9:.2f} GB" in out
    assert os.listdir(tmp_path) == ["salient"]  # a dry run creates nothing


def test_command_downloads_then_reports_already_present(server, tmp_path, monkeypatch, capsys):
    entry = _serve_registry_entry(monkeypatch, server)
    assert _run_download(["sam", "--models-dir", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "sams" / entry.filename).read_bytes() == PAYLOAD
    assert _run_download(["vit-b", "--models-dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "downloaded" in out and "already present" in out
    assert len(server.requests) == 1


def test_a_models_dir_that_does_not_exist_is_refused_unless_asked_to_create_it(server, tmp_path, monkeypatch, capsys):
    """A misspelt --models-dir must not become a new folder that gigabytes go into: exit 2 naming the path and the
    flag, nothing fetched, nothing created; with --create-models-dir the folder is made and filled."""
    from salient_background.cli import main

    entry = _serve_registry_entry(monkeypatch, server)
    typo = tmp_path / "ComfyUI" / "modles"
    for extra in ([], ["--dry-run"]):
        assert main(["download", "sam", "--models-dir", str(typo), "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert f"--models-dir {str(typo)!r} does not exist" in err and "--create-models-dir" in err
    assert server.requests == [] and not typo.exists() and not typo.parent.exists()

    assert main(["download", "sam", "--models-dir", str(typo), "--create-models-dir", "--quiet"]) == 0
    assert (typo / "sams" / entry.filename).read_bytes() == PAYLOAD
    assert main(["download", "sam", "--models-dir", str(typo), "--quiet"]) == 0  # it exists now: no flag needed
    assert len(server.requests) == 1


def test_a_models_dir_that_is_a_file_is_refused(tmp_path, capsys):
    from salient_background.cli import main

    (tmp_path / "models").write_text("not a folder")
    assert main(["download", "sam", "--models-dir", str(tmp_path / "models"), "--create-models-dir"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_model_file_path_for_code_outside_comfyui(server, tmp_path, monkeypatch):
    _serve_registry_entry(monkeypatch, server)
    with pytest.raises(CheckpointError) as info:
        downloader.model_file_path("sam_vit_b", str(tmp_path))
    assert f"download sam-vit-b --models-dir {tmp_path}" in str(info.value) and str(tmp_path / "sams") in str(info.value)
    assert server.requests == []
    path = downloader.model_file_path("sam", str(tmp_path), download=True, progress=False)
    assert path == str(tmp_path / "sams" / "sam_vit_b_01ec64.pth") and open(path, "rb").read() == PAYLOAD
    # the ControlNet is a folder: its path is returned once both files are there
    cn = tmp_path / "controlnet" / "photo-background-generation"
    cn.mkdir(parents=True)
    (cn / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        downloader.model_file_path("controlnet", str(tmp_path))
    (cn / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert downloader.model_file_path("controlnet", str(tmp_path)) == str(cn)


def test_cli_entry_point(capsys, tmp_path):
    from salient_background.cli import main

    assert main(["download", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == model_registry.render_markdown_table()
    assert main(["download", "sam-vit-x", "--models-dir", str(tmp_path), "--dry-run"]) == 2
    assert "unknown model name(s): sam-vit-x" in capsys.readouterr().err


def test_names_are_spelled_as_help_shows_them_in_every_message(capsys, tmp_path):
    from salient_background.cli import build_parser, main

    assert main(["download", "sam-vit-x", "--models-dir", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "sam-vit-h" in err and "sam_vit_h" not in err and "inspyrenet_base" not in err
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    help_text = subparsers.choices["download"].format_help()
    assert "sam-vit-h" in help_text and "sam_vit_h," not in help_text
    assert main(["download", "--list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^sam-vit-h ", listing, flags=re.M) and not re.search(r"^sam_vit_h ", listing, flags=re.M)
    text = downloader.missing_model_message("sam_vit_h", ["/c/models/sams"])
    assert "download sam-vit-h" in text and "sam_vit_h " not in text


def test_offline_download_prints_one_table_and_the_advice_once(monkeypatch, tmp_path, capsys):
    from salient_background.cli import main

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: every host is unreachable
    rows = tuple(dataclasses.replace(m, urls=tuple(u.replace("https://", f"http://127.0.0.1:{port}/") for u in m.urls))
                 for m in MODEL_FILES)
    monkeypatch.setattr(model_registry, "MODEL_FILES", rows)
    monkeypatch.setattr(model_registry, "BY_KEY", {m.key: m for m in rows})
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    assert main(["download", "default", "--models-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    wanted = model_registry.select(["default"])
    assert err.count("HTTPS_PROXY") == 1 and err.count("Manual alternative") == 1
    header = next(line for line in err.splitlines() if line.split() == ["file", "URL", "destination"])
    table = err.splitlines()[err.splitlines().index(header) + 1:][:len(wanted)]
    for m, line in zip(wanted, table):
        target = os.path.join(str(tmp_path), m.folder, *m.filename.split("/"))
        assert line.split() == [m.basename, m.urls[0], target]
        assert err.count(m.urls[0]) == 1 and err.count(target) == 1
    assert "was refused" in err and err.strip().endswith("could not be fetched (see above).")
    assert len(err) < 3000  # was ~15 paragraphs of ~600 characters


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_progress_is_shown_with_or_without_tqdm(server, tmp_path, monkeypatch, with_tqdm):
    if with_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails: plain status line
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    fetch(make_entry(server.url("/files/model.pth")), tmp_path, progress=True)
    text = stream.getvalue()
    assert "model.pth" in text
    assert ("100%" in text) if with_tqdm else ("1.05 MB / 1.05 MB (100%)" in text)


def test_opt_in_download_of_the_controlnet_folder_by_its_name(server, fake_comfy_folders, monkeypatch):
    from salient_background.nodes import comfy_glue

    server.files["/config.json"] = b'{"_class_name": "ControlNetModel"}'
    rows = []
    for m in MODEL_FILES:
        if m.group == "controlnet":
            data = server.files["/config.json"] if m.basename == "config.json" else PAYLOAD
            path = "/config.json" if m.basename == "config.json" else "/files/model.pth"
            m = dataclasses.replace(m, urls=(server.url(path),), size=len(data), sha256=hashlib.sha256(data).hexdigest())
        rows.append(m)
    monkeypatch.setattr(model_registry, "MODEL_FILES", tuple(rows))
    monkeypatch.setattr(model_registry, "BY_KEY", {m.key: m for m in rows})
    monkeypatch.setenv(downloader.AUTO_DOWNLOAD_ENV, "1")
    path = comfy_glue.resolve_model_file("controlnet", "photo-background-generation", where_to_get="")
    expected = fake_comfy_folders.parent / "controlnet" / "photo-background-generation"
    assert path == str(expected)
    assert (expected / "diffusion_pytorch_model.safetensors").read_bytes() == PAYLOAD
    assert sorted(os.listdir(expected)) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_rows_without_a_published_size_are_listed_as_unknown_not_as_zero():
    table = model_registry.render_markdown_table()
    rows = {line.split("|")[2].strip(): line.split("|")[4].strip() for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| model")}
    assert rows["`stable-diffusion-xl-1.0-inpainting-0.1/`"] == "unknown"
    assert rows["`sd-v1-5-inpainting.ckpt`"] == "unknown"
    assert "~0 B" not in table and "| ~ |" not in table
