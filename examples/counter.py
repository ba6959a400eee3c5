"""A tiny stateful web service: each GET returns the next value of an in-memory counter.

Used by lightwhale's tests and benchmarks to prove that a container woken from sleep
kept its memory: the counter never resets. MEMORY_MIB allocates and touches that much
memory (the state a real service would hold); PORT sets the port (default 8080);
KEEPALIVE=1 keeps HTTP/1.1 connections open (the throughput benchmark).
GET /digest returns the SHA-256 of that memory: equal before a sleep and after a wake
means every page came back intact.
"""

import hashlib
import http.server
import os
import socketserver

MEMORY_MIB = int(os.environ.get("MEMORY_MIB", "0"))
PORT = int(os.environ.get("PORT", "8080"))

# Touch every page so the memory is really resident, as a warm cache would be; each page
# gets its own value, so a page restored in the wrong place changes the digest.
ballast = bytearray(MEMORY_MIB * 1024 * 1024)
for i in range(0, len(ballast), 4096):
    ballast[i] = (i >> 12) % 251 + 1

count = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global count
        if self.path == "/digest":
            body = (hashlib.sha256(ballast).hexdigest() + "\n").encode()
        else:
            count += 1
            body = f"{count}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if os.environ.get("KEEPALIVE") == "1":
    Handler.protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the
    # client's delayed ACK (40 ms) on every request of a kept-alive connection.
    Handler.disable_nagle_algorithm = True


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


print(f"counter listening on {PORT} with {MEMORY_MIB} MiB", flush=True)
Server(("", PORT), Handler).serve_forever()
