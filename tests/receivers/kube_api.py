#!/usr/bin/env python3
"""A stand-in Kubernetes API server for one endpoint: the pod list and watch.

Serves the PodList JSON file given (written in the API's v1 wire format) to
`GET /api/v1/pods`, honouring `fieldSelector=spec.nodeName=...` the way the
API does, and holds `watch=true` requests open without events until their
timeout. Each request is appended to --log as a JSON line. Prints
"listening on PORT" once ready.
"""
import argparse
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", required=True, help="PodList JSON file")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            query = urllib.parse.parse_qs(url.query)
            with LOCK, open(args.log, "a") as f:
                f.write(json.dumps({"path": url.path, "query": query}) + "\n")
            if url.path != "/api/v1/pods":
                self.send_error(404)
                return
            if query.get("watch", ["false"])[0] in ("true", "1"):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                time.sleep(min(float(query.get("timeoutSeconds", ["30"])[0]), 30))
                self.wfile.write(b"0\r\n\r\n")
                return
            with open(args.pods) as f:
                pods = json.load(f)
            selector = query.get("fieldSelector", [""])[0]
            if selector.startswith("spec.nodeName="):
                node = selector.split("=", 1)[1]
                pods["items"] = [p for p in pods["items"] if p["spec"].get("nodeName") == node]
            body = json.dumps(pods).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
