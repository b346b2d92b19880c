#!/usr/bin/env python3
"""A receiver for Grafana Pyroscope's push API (`push.v1.PusherService/Push`,
Connect unary, protobuf body) for Hearth's tests.

No Pyroscope server can run on the test machines, so this stands in for its
HTTP front: it decodes PushRequest with a message class built here from the
API's field numbers (series=1; labels=1, samples=2; raw_profile=1, ID=2;
name=1, value=2), writes each raw pprof to --dir, and appends one JSON line
per request to --dir/requests.jsonl:

  {"content_type": ..., "series": [{"labels": {...}, "files": [...], "ids": [...]}]}

The pprof files are then read by `go tool pprof`, an independent reader.
Prints "listening on PORT" once it accepts requests.
"""

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

LOCK = threading.Lock()


def push_request_class():
    f = descriptor_pb2.FileDescriptorProto(name="push_test.proto", package="push.v1", syntax="proto3")

    def message(name, *fields):
        m = f.message_type.add(name=name)
        for number, field_name, kind, repeated, type_name in fields:
            field = m.field.add(name=field_name, number=number, type=kind)
            field.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
            if type_name:
                field.type_name = type_name

    T = descriptor_pb2.FieldDescriptorProto
    message("LabelPair", (1, "name", T.TYPE_STRING, False, None), (2, "value", T.TYPE_STRING, False, None))
    message("RawSample", (1, "raw_profile", T.TYPE_BYTES, False, None), (2, "ID", T.TYPE_STRING, False, None))
    message(
        "RawProfileSeries",
        (1, "labels", T.TYPE_MESSAGE, True, ".push.v1.LabelPair"),
        (2, "samples", T.TYPE_MESSAGE, True, ".push.v1.RawSample"),
    )
    message("PushRequest", (1, "series", T.TYPE_MESSAGE, True, ".push.v1.RawProfileSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("push.v1.PushRequest"))


PushRequest = push_request_class()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    counter = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/push.v1.PusherService/Push":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = PushRequest()
            request.ParseFromString(body)
            series = []
            with LOCK:
                for s in request.series:
                    files = []
                    for sample in s.samples:
                        counter[0] += 1
                        path = os.path.join(args.dir, f"profile-{counter[0]:04d}.pb.gz")
                        with open(path, "wb") as out:
                            out.write(sample.raw_profile)
                        files.append(path)
                    series.append({
                        "labels": {l.name: l.value for l in s.labels},
                        "files": files,
                        "ids": [x.ID for x in s.samples],
                    })
                line = {
                    "content_type": self.headers.get("Content-Type"),
                    "connect_version": self.headers.get("Connect-Protocol-Version"),
                    "tenant": self.headers.get("X-Scope-OrgID"),
                    "series": series,
                }
                with open(os.path.join(args.dir, "requests.jsonl"), "a") as f:
                    f.write(json.dumps(line) + "\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/proto")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
