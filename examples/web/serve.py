#!/usr/bin/env python3
"""A small static server for the omex web page, on 127.0.0.1 only.

    python3 examples/web/serve.py --model path/to/smollm2.omex [--model other.omex] [--port 8080]

Serves the page (this folder) at /, the omex-web package (scripts/web-package.sh writes target/web/package) at
/pkg/, each model directory at /models/NAME/, and the list of model names at /models.json. Standard library
only. `--port 0` picks a free port; the first line printed is the page's URL.
"""

import argparse
import functools
import http.server
import json
import os
import posixpath
import sys
import threading
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TYPES = {
    ".wasm": "application/wasm",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".bin": "application/octet-stream",
    ".png": "image/png",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    """Maps URL prefixes to folders; everything else is refused (no listing of the file system)."""

    def __init__(self, *args, mounts, models, quiet, requests, **kwargs):
        self.mounts = mounts  # [(url prefix, folder)], longest prefix first
        self.models = models
        self.quiet = quiet
        self.requests = requests  # every path asked for, in order (tests read it: a cached load asks nothing)
        super().__init__(*args, **kwargs)

    def translate_path(self, path):
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        path = posixpath.normpath(path)
        for prefix, folder in self.mounts:
            if path == prefix.rstrip("/") or path.startswith(prefix):
                rest = path[len(prefix):].lstrip("/")
                parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
                return os.path.join(folder, *parts)
        return os.path.join(HERE, "__not_served__")

    def guess_type(self, path):
        return TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")

    def list_directory(self, path):
        self.send_error(404, "no directory listings")
        return None

    def end_headers(self):
        # The page is a development tool: always fresh, never cached across builds.
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_GET(self):
        self.requests.append(urllib.parse.urlsplit(self.path).path)
        if urllib.parse.urlsplit(self.path).path == "/models.json":
            body = json.dumps(sorted(self.models)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write("serve.py: %s\n" % (fmt % args))


DEFAULT_PKG = os.path.join(REPO, "target", "web", "package")


def make_server(models, port=0, pkg=None, quiet=False, mounts=()):
    """A ThreadingHTTPServer on 127.0.0.1 serving the page, the omex-web package, `models` (paths) and any
    extra (url prefix, folder) `mounts`. `server.requests` lists every path asked for."""
    pkg = pkg or DEFAULT_PKG
    names = {}
    mounts = [("/pkg/", pkg)] + list(mounts)
    for m in models:
        m = os.path.abspath(m)
        if not os.path.isfile(os.path.join(m, "metadata.json")):
            raise SystemExit(f"serve.py: {m} is not a model directory (no metadata.json); "
                             "make one with `omex convert MODEL.gguf -o DIR`")
        name = os.path.basename(m.rstrip("/"))
        names[name] = m
        mounts.append((f"/models/{name}/", m))
    mounts.append(("/", HERE))
    mounts.sort(key=lambda x: -len(x[0]))
    requests = []
    handler = functools.partial(Handler, mounts=mounts, models=list(names), quiet=quiet, requests=requests)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.requests = requests
    return server


def serve_in_thread(models, port=0, pkg=None, quiet=True, mounts=()):
    """Starts the server on a background thread; returns (server, base URL)."""
    server = make_server(models, port, pkg, quiet, mounts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], help="a model.omex directory to serve (repeatable)")
    ap.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any free one)")
    ap.add_argument("--pkg", help="the omex-web package folder (default: target/web/package)")
    ap.add_argument("--quiet", action="store_true", help="do not log requests")
    args = ap.parse_args()
    server = make_server(args.model, args.port, args.pkg, args.quiet)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(url, flush=True)
    if not os.path.isfile(os.path.join(args.pkg or DEFAULT_PKG, "index.js")):
        print("serve.py: the omex-web package is not built yet: run scripts/web-package.sh", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
