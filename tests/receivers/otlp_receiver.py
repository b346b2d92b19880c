#!/usr/bin/env python3
"""An OTLP profiles receiver for Hearth's tests, built on the official
OpenTelemetry Python bindings (PyPI `opentelemetry-proto`, v1development
profiles) -- a decoder Hearth did not write.

It serves ProfilesService/Export over gRPC, or POST /v1development/profiles
over HTTP, checks every request against the protocol's rules, and appends
one JSON line per request to --out:

  {"transport": ..., "wire_bytes": n, "message_bytes": n,
   "errors": [...], "resources": [{"attributes": {...}, "profiles": [
     {"sample_type": [t, u], "period_type": [t, u], "period": n, "attributes": {...},
      "time_unix_nano": t, "duration_nano": d, "profile_id": hex,
      "samples": [{"frames": [root, ..., leaf], "value": v, "attributes": {...}}]}]}]}

Prints "listening on PORT" once it accepts requests.
"""

import argparse
import gzip
import json
import ssl
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import unknown_fields
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2 as service,
    profiles_service_pb2_grpc as service_grpc,
)

LOCK = threading.Lock()


def is_repeated(field):
    # protobuf >= 5 has is_repeated; older versions only label.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def unknown_field_paths(message, path="request"):
    """Every place in the message tree that carries fields the schema lacks."""
    found = []
    if len(unknown_fields.UnknownFieldSet(message)) > 0:
        found.append(path)
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            continue
        items = value if is_repeated(field) else [value]
        for i, item in enumerate(items):
            found.extend(unknown_field_paths(item, f"{path}.{field.name}[{i}]"))
    return found


def check(request):
    """Violations of the v1development dictionary rules."""
    errors = [f"unknown fields at {p}" for p in unknown_field_paths(request)]
    d = request.dictionary
    tables = {
        "mapping_table": d.mapping_table,
        "location_table": d.location_table,
        "function_table": d.function_table,
        "link_table": d.link_table,
        "attribute_table": d.attribute_table,
        "stack_table": d.stack_table,
    }
    for name, table in tables.items():
        if len(table) == 0:
            errors.append(f"{name} is empty (index 0 must hold the zero value)")
        elif table[0].SerializeToString() != b"":
            errors.append(f"{name}[0] is not the zero value")
        encoded = [entry.SerializeToString() for entry in table]
        if len(set(encoded)) != len(encoded):
            errors.append(f"{name} has duplicate entries")
    if len(d.string_table) == 0 or d.string_table[0] != "":
        errors.append('string_table[0] is not ""')
    if len(set(d.string_table)) != len(d.string_table):
        errors.append("string_table has duplicate entries")

    def in_range(what, index, table):
        if not 0 <= index < len(table):
            errors.append(f"{what} {index} out of range (table of {len(table)})")

    strings = d.string_table
    for i, m in enumerate(d.mapping_table):
        in_range(f"mapping_table[{i}].filename_strindex", m.filename_strindex, strings)
        for a in m.attribute_indices:
            in_range(f"mapping_table[{i}].attribute_indices", a, d.attribute_table)
    for i, loc in enumerate(d.location_table):
        in_range(f"location_table[{i}].mapping_index", loc.mapping_index, d.mapping_table)
        for line in loc.lines:
            in_range(f"location_table[{i}].lines.function_index", line.function_index, d.function_table)
        for a in loc.attribute_indices:
            in_range(f"location_table[{i}].attribute_indices", a, d.attribute_table)
    for i, f in enumerate(d.function_table):
        for field in ("name_strindex", "system_name_strindex", "filename_strindex"):
            in_range(f"function_table[{i}].{field}", getattr(f, field), strings)
    for i, a in enumerate(d.attribute_table):
        in_range(f"attribute_table[{i}].key_strindex", a.key_strindex, strings)
        in_range(f"attribute_table[{i}].unit_strindex", a.unit_strindex, strings)
    for i, s in enumerate(d.stack_table):
        for l in s.location_indices:
            in_range(f"stack_table[{i}].location_indices", l, d.location_table)
    for rp in request.resource_profiles:
        for sp in rp.scope_profiles:
            for p in sp.profiles:
                for vt in (p.sample_type, p.period_type):
                    in_range("value type", vt.type_strindex, strings)
                    in_range("value type", vt.unit_strindex, strings)
                for a in p.attribute_indices:
                    in_range("profile.attribute_indices", a, d.attribute_table)
                if p.profile_id and p.profile_id == bytes(16):
                    errors.append("profile_id is all zeroes")
                for s in p.samples:
                    in_range("sample.stack_index", s.stack_index, d.stack_table)
                    in_range("sample.link_index", s.link_index, d.link_table)
                    for a in s.attribute_indices:
                        in_range("sample.attribute_indices", a, d.attribute_table)
                    if not s.values and not s.timestamps_unix_nano:
                        errors.append("sample without values or timestamps")
    return errors


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def summarize(request):
    d = request.dictionary
    s = d.string_table

    def attributes(indices):
        return {s[d.attribute_table[i].key_strindex]: any_value(d.attribute_table[i].value) for i in indices}

    def frames(stack_index):
        names = []
        for loc_index in d.stack_table[stack_index].location_indices:
            loc = d.location_table[loc_index]
            for line in loc.lines:  # innermost first
                names.append(s[d.function_table[line.function_index].name_strindex])
        return list(reversed(names))

    resources = []
    for rp in request.resource_profiles:
        profiles = []
        for sp in rp.scope_profiles:
            for p in sp.profiles:
                profiles.append({
                    "sample_type": [s[p.sample_type.type_strindex], s[p.sample_type.unit_strindex]],
                    "period_type": [s[p.period_type.type_strindex], s[p.period_type.unit_strindex]],
                    "period": p.period,
                    "time_unix_nano": p.time_unix_nano,
                    "duration_nano": p.duration_nano,
                    "profile_id": p.profile_id.hex(),
                    "attributes": attributes(p.attribute_indices),
                    "samples": [
                        {"frames": frames(x.stack_index), "value": sum(x.values), "attributes": attributes(x.attribute_indices)}
                        for x in p.samples
                    ],
                })
        resources.append({
            "attributes": {kv.key: any_value(kv.value) for kv in rp.resource.attributes},
            "profiles": profiles,
        })
    return resources


def record(out, request, transport, wire_bytes):
    line = {
        "transport": transport,
        "wire_bytes": wire_bytes,
        "message_bytes": request.ByteSize(),
        "errors": check(request),
        "resources": summarize(request),
    }
    with LOCK, open(out, "a") as f:
        f.write(json.dumps(line) + "\n")


class Service(service_grpc.ProfilesServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        record(self.out, request, "grpc", request.ByteSize())
        return service.ExportProfilesServiceResponse()


def serve_http(port, out, tls):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1development/profiles":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers["Content-Length"]))
            wire_bytes = len(body)
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(415)
                return
            request = service.ExportProfilesServiceRequest()
            request.ParseFromString(body)
            record(out, request, "http", wire_bytes)
            reply = service.ExportProfilesServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tls-cert", help="serve TLS with this PEM certificate chain")
    parser.add_argument("--tls-key", help="and this PEM private key")
    args = parser.parse_args()
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    if args.protocol == "http":
        serve_http(args.port, args.out, tls)
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_grpc.add_ProfilesServiceServicer_to_server(Service(args.out), server)
    if tls:
        with open(tls[0], "rb") as cert, open(tls[1], "rb") as key:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        port = server.add_secure_port(f"127.0.0.1:{args.port}", credentials)
    else:
        port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
