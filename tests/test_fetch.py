"""fetch_names against a real HTTP server on 127.0.0.1: good file, bad checksum, server down."""

import hashlib
import http.server
import socket
import threading

import pytest

from core.data import DataError, fetch_names

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
    dest = tmp_path / "data" / "names.txt"
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
    assert url in str(err.value) and str(dest) in str(err.value)
    assert not dest.exists()


def test_existing_file_survives_a_failed_fetch(server, tmp_path):
    dest = tmp_path / "names.txt"
    dest.write_bytes(b"keep\n")
    with pytest.raises(DataError):
        fetch_names(dest, url=server, sha256="0" * 64)
    assert dest.read_bytes() == b"keep\n"
