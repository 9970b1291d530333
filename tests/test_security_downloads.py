"""The downloader against a hostile host (a local HTTP server on 127.0.0.1, no internet): no redirect from https
down to plain http or to another scheme, and no more bytes written than the file can be."""
from __future__ import annotations

import builtins
import dataclasses
import hashlib
import http.client
import os
import urllib.request

import pytest

from salient_background.models.model_files import downloader
from salient_background.models.model_files.model_registry import ModelFile
from sb_testkit.local_http import LocalFileServer

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
EXTRA = b"\x00" * (3 * 2**20)  # what a hostile host appends


@pytest.fixture
def server():
    with LocalFileServer(lifetime=60) as srv:
        srv.files["/files/model.pth"] = PAYLOAD
        srv.files["/files/endless.pth"] = PAYLOAD + EXTRA
        yield srv


def entry_for(url, **overrides) -> ModelFile:
    values = dict(key="test_model", filename="model.pth", folder="sams", title="test model", urls=(url,),
                  revision=None, size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest(), md5=None,
                  licence="MIT", approx_size="1 MB", group="test_model")
    values.update(overrides)
    return ModelFile(**values)


def fetch(entry, target, **kw):
    return downloader.download_entry(entry, str(target), log=lambda m: None, progress=False, retries=0, **kw)


class LoopbackTLS(urllib.request.HTTPSHandler):
    """Serves ``https://`` URLs from the local plain-HTTP server: stands in for a TLS host whose redirect points
    elsewhere (the redirect handling under test is the real one)."""

    def https_open(self, req):
        return self.do_open(http.client.HTTPConnection, req)


def test_a_redirect_from_https_down_to_plain_http_is_refused(server, tmp_path):
    server.redirects["/secure/model.pth"] = "/files/model.pth"  # Location: http://127.0.0.1:<port>/files/model.pth
    https_url = server.url("/secure/model.pth").replace("http://", "https://")
    opener = downloader.make_opener(LoopbackTLS())
    with pytest.raises(downloader.DownloadError, match="redirects to http://.*refused"):
        fetch(entry_for(https_url), tmp_path, opener=opener)
    assert ("/files/model.pth", None) not in server.requests  # the plain-http URL was never asked for
    assert os.listdir(tmp_path) == []
    # the same redirect from an http URL (what the user asked for) is followed, as the hubs' 302s are
    outcome = fetch(entry_for(server.url("/secure/model.pth")), tmp_path)
    assert outcome.status == "downloaded"


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/model.pth", "file:///etc/passwd"])
def test_a_redirect_to_another_scheme_is_refused(target):
    handler = downloader.NoDowngradeRedirects()
    request = urllib.request.Request("http://127.0.0.1/model.pth")
    with pytest.raises(downloader.DownloadError, match="refused"):
        handler.redirect_request(request, None, 302, "Found", {}, target)


def test_a_host_sending_more_than_the_published_size_is_stopped_at_that_size(server, tmp_path, monkeypatch):
    server.no_length.add("/files/endless.pth")
    largest = []
    real_open = builtins.open

    class Watched:  # the .part file's size after every write
        def __init__(self, fh):
            self.fh = fh

        def write(self, block):
            written = self.fh.write(block)
            largest.append(self.fh.tell())
            return written

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

    def watching_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        return Watched(fh) if str(path).endswith(".part") else fh

    monkeypatch.setattr(downloader, "open", watching_open, raising=False)
    with pytest.raises(downloader.DownloadError, match="sent more than"):
        fetch(entry_for(server.url("/files/endless.pth")), tmp_path)
    assert largest and max(largest) <= len(PAYLOAD) + downloader.CHUNK  # never more than one block past the size
    assert not os.path.exists(tmp_path / "model.pth") and not os.path.exists(tmp_path / "model.pth.part")


def test_a_file_without_a_published_size_is_capped_by_its_rounded_size(server, tmp_path):
    unknown = dict(size=None, sha256=None, approx_size="1 MB")  # a row with only a rounded size, no checksum
    server.no_length.add("/files/endless.pth")
    with pytest.raises(downloader.DownloadError, match="sent more than"):
        fetch(entry_for(server.url("/files/endless.pth"), **unknown), tmp_path)
    assert not os.path.exists(tmp_path / "model.pth")
    # announced too big: refused before a byte is written
    server.no_length.clear()
    with pytest.raises(downloader.DownloadError, match="refused before writing"):
        fetch(entry_for(server.url("/files/endless.pth"), **unknown), tmp_path)
    assert os.listdir(tmp_path) == []
    # the right file still comes through, unverified as before
    outcome = fetch(entry_for(server.url("/files/model.pth"), **unknown), tmp_path)
    assert outcome.status == "downloaded" and os.path.getsize(tmp_path / "model.pth") == len(PAYLOAD)


def test_byte_limit_follows_the_table():
    entry = entry_for("http://127.0.0.1/x")
    assert downloader.byte_limit(entry) == len(PAYLOAD)
    assert downloader.byte_limit(dataclasses.replace(entry, size=None, approx_size="2 GB")) == int(2e9 * 1.1) + 10**6
    assert downloader.byte_limit(dataclasses.replace(entry, size=None, approx_size="")) == downloader.UNKNOWN_SIZE_LIMIT
