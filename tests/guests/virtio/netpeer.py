"""The host side of the Linux network test, run inside the test's network namespace:
serves NET_BYTES of random data at http://HOST_IP:HTTP_PORT/blob and takes one upload of
NET_BYTES on SINK_PORT, printing both checksums.

Output lines: `RX-SHA256 <hex>` (what the guest should download), `READY`, then
`TX-SHA256 <hex> <bytes>` once the upload has ended. Exits after that or after `--timeout`."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import socket
import sys
import threading

from guests.virtio.linux import HOST_IP, HTTP_PORT, NET_BYTES, SINK_PORT


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()
    blob = os.urandom(NET_BYTES)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/blob" else 404)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *_args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((HOST_IP, HTTP_PORT), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    sink = socket.create_server((HOST_IP, SINK_PORT))
    sink.settimeout(args.timeout)
    print(f"RX-SHA256 {hashlib.sha256(blob).hexdigest()}", flush=True)
    print("READY", flush=True)
    try:
        conn, _ = sink.accept()
    except TimeoutError:
        print("TIMEOUT", flush=True)
        return 1
    h, total = hashlib.sha256(), 0
    with conn:
        conn.settimeout(args.timeout)
        while total < NET_BYTES:  # the guest's nc may keep its side open: stop at the size
            data = conn.recv(1 << 16)
            if not data:
                break
            h.update(data)
            total += len(data)
    print(f"TX-SHA256 {h.hexdigest()} {total}", flush=True)
    httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
