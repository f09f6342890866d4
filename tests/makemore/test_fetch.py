"""fetch_names against a real HTTP server on 127.0.0.1: good file, bad checksum, server down, cut-off,
oversized and too slow downloads."""

import hashlib
import http.server
import socket
import threading
import time

import pytest

from core.makemore.data import DataError, download, fetch_names

BODY = b"emma\nolivia\nava"


@pytest.fixture
def server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/names.txt"
    httpd.shutdown()
    httpd.server_close()


def test_good_file(server, tmp_path):
    """The file lands in folders made for it, and a second fetch into the same folder replaces it."""
    dest = tmp_path / "a" / "data" / "names.txt"
    for _ in range(2):
        assert fetch_names(dest, url=server, sha256=hashlib.sha256(BODY).hexdigest()) == dest
        assert dest.read_bytes() == BODY
        assert [p.name for p in dest.parent.iterdir()] == ["names.txt"]


def test_bad_checksum_writes_nothing(server, tmp_path):
    dest = tmp_path / "names.txt"
    with pytest.raises(DataError) as err:
        fetch_names(dest, url=server, sha256="0" * 64)
    assert server in str(err.value) and str(dest) in str(err.value) and "by hand" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_server_down(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/names.txt"
    dest = tmp_path / "names.txt"
    with pytest.raises(DataError) as err:
        fetch_names(dest, url=url, timeout=5)
    assert url in str(err.value) and str(dest) in str(err.value) and "(connection refused)" in str(err.value)
    assert not dest.exists()


def test_existing_file_survives_a_failed_fetch(server, tmp_path):
    dest = tmp_path / "names.txt"
    dest.write_bytes(b"keep\n")
    with pytest.raises(DataError):
        fetch_names(dest, url=server, sha256="0" * 64)
    assert dest.read_bytes() == b"keep\n"


@pytest.fixture
def odd_server():
    """A server whose reply is set per test: server.reply = (headers, [body pieces], seconds between pieces)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            headers, pieces, pause = self.server.reply
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            try:
                for piece in pieces:
                    self.wfile.write(piece)
                    self.wfile.flush()
                    time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/names.txt"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_a_body_of_many_chunks_at_exactly_the_cap_arrives_whole(odd_server):
    """A body of max_bytes (with or without Content-Length) is accepted, not refused, and read in many pieces it
    comes back byte for byte."""
    body = bytes(range(256)) * 1000  # 256,000 bytes: several 64 KiB reads
    for headers in ({"Content-Length": str(len(body))}, {"Connection": "close"}):
        odd_server.reply = (headers, [body], 0)
        assert download(odd_server.url, timeout=5, max_bytes=len(body)) == body


def test_cut_off_download_is_a_data_error(odd_server, tmp_path):
    """The server promises 1000 bytes and closes after 15: a DataError, nothing written."""
    odd_server.reply = ({"Content-Length": "1000", "Connection": "close"}, [BODY], 0)
    with pytest.raises(DataError, match="cut off after 15 of 1000 bytes"):
        fetch_names(tmp_path / "names.txt", url=odd_server.url, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_chunked_download_is_a_data_error(odd_server, tmp_path):
    """A chunked reply that stops mid-chunk (http.client.IncompleteRead) is a DataError too."""
    odd_server.reply = ({"Transfer-Encoding": "chunked", "Connection": "close"}, [b"100\r\nemma\n"], 0)
    with pytest.raises(DataError, match="cut off"):
        fetch_names(tmp_path / "names.txt", url=odd_server.url, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_announced_size_over_the_cap_is_refused_at_once(odd_server, tmp_path):
    odd_server.reply = ({"Content-Length": str(10**9)}, [], 0)
    started = time.monotonic()
    with pytest.raises(DataError, match="announces 1000000000 bytes, more than the 4096"):
        fetch_names(tmp_path / "names.txt", url=odd_server.url, timeout=5, max_bytes=4096)
    assert time.monotonic() - started < 5 and list(tmp_path.iterdir()) == []


def test_unannounced_size_over_the_cap_is_stopped(odd_server, tmp_path):
    odd_server.reply = ({"Connection": "close"}, [b"a" * 1024] * 10, 0)
    with pytest.raises(DataError, match="exceeded 4096 bytes"):
        fetch_names(tmp_path / "names.txt", url=odd_server.url, timeout=5, max_bytes=4096)
    assert list(tmp_path.iterdir()) == []


def test_slow_download_meets_the_deadline(odd_server, tmp_path):
    """A server that trickles a byte every 0.1 s never trips the per-read timeout; the overall deadline stops it."""
    odd_server.reply = ({"Connection": "close"}, [b"a"] * 100, 0.1)
    started = time.monotonic()
    with pytest.raises(DataError, match="took longer than 0.5 s"):
        fetch_names(tmp_path / "names.txt", url=odd_server.url, timeout=5, deadline=0.5)
    assert time.monotonic() - started < 3 and list(tmp_path.iterdir()) == []


def test_not_a_url(tmp_path):
    with pytest.raises(DataError, match="cannot download not-a-url"):
        fetch_names(tmp_path / "names.txt", url="not-a-url")
