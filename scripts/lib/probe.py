#!/usr/bin/env python3
"""Readiness probes that speak the real protocols, standard library only.

  probe.py kafka 127.0.0.1:9092   -> a Metadata request; prints the brokers
  probe.py cql   127.0.0.1:9042   -> SELECT release_version FROM system.local

Exit 0 when the server answered properly, 1 otherwise. A listening port is not
enough: Kafka must list a broker and Cassandra must run a query.
"""
import socket
import struct
import sys


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def kstr(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def kafka_call(sock, api_key, version, corr, body):
    header = struct.pack(">hhi", api_key, version, corr) + kstr("herald-probe")
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    resp = recv_exact(sock, size)
    if struct.unpack(">i", resp[:4])[0] != corr:
        raise ValueError("correlation id mismatch")
    return resp[4:]


def probe_kafka(host, port):
    with socket.create_connection((host, port), timeout=5) as sock:
        # ApiVersions v0 is always served: learn which Metadata versions are.
        resp = kafka_call(sock, 18, 0, 1, b"")
        err, n = struct.unpack(">hi", resp[:6])
        if err:
            raise ValueError(f"ApiVersions error {err}")
        ranges = {}
        for i in range(n):
            key, lo, hi = struct.unpack(">hhh", resp[6 + 6 * i: 12 + 6 * i])
            ranges[key] = (lo, hi)
        lo, hi = ranges[3]
        version = max(lo, 4)
        if version > min(hi, 8):
            raise ValueError(f"no non-flexible Metadata version in {lo}..{hi}")
        # Metadata v4..v8: topics = null (all), allow_auto_topic_creation = false,
        # v8 adds two include_*_authorized_operations flags.
        body = struct.pack(">i", -1) + b"\x00" + (b"\x00\x00" if version >= 8 else b"")
        resp = kafka_call(sock, 3, version, 2, body)
        off = 4  # throttle_time_ms
        nbrokers = struct.unpack(">i", resp[off: off + 4])[0]
        off += 4
        brokers = []
        for _ in range(nbrokers):
            node = struct.unpack(">i", resp[off: off + 4])[0]
            off += 4
            hlen = struct.unpack(">h", resp[off: off + 2])[0]
            off += 2
            bhost = resp[off: off + hlen].decode()
            off += hlen
            bport = struct.unpack(">i", resp[off: off + 4])[0]
            off += 4
            rlen = struct.unpack(">h", resp[off: off + 2])[0]
            off += 2 + max(rlen, 0)
            brokers.append(f"{node}@{bhost}:{bport}")
        if not brokers:
            raise ValueError("metadata lists no broker")
        return "brokers " + ", ".join(brokers)


def cql_frame(opcode, stream, body):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def cql_read(sock):
    version, _flags, _stream, opcode, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    return opcode, recv_exact(sock, length)


def probe_cql(host, port):
    with socket.create_connection((host, port), timeout=5) as sock:
        opts = kstr("CQL_VERSION") + kstr("3.0.0")
        sock.sendall(cql_frame(0x01, 1, struct.pack(">h", 1) + opts))
        opcode, body = cql_read(sock)
        if opcode != 0x02:
            raise ValueError(f"STARTUP answered opcode {opcode}: {body[6:].decode(errors='replace')}")
        query = b"SELECT release_version FROM system.local"
        sock.sendall(cql_frame(0x07, 2, struct.pack(">i", len(query)) + query + struct.pack(">hB", 1, 0)))
        opcode, body = cql_read(sock)
        if opcode != 0x08:
            raise ValueError(f"QUERY answered opcode {opcode}: {body[6:].decode(errors='replace')}")
        kind, flags, ncols = struct.unpack(">iii", body[:12])
        off = 12
        if kind != 2 or ncols != 1:
            raise ValueError("unexpected result shape")
        if flags & 0x0001:  # global table spec: keyspace, table
            for _ in range(2):
                off += 2 + struct.unpack(">h", body[off: off + 2])[0]
        off += 2 + struct.unpack(">h", body[off: off + 2])[0]  # column name
        off += 2  # type id (varchar carries no extra option)
        nrows = struct.unpack(">i", body[off: off + 4])[0]
        off += 4
        if nrows < 1:
            raise ValueError("system.local returned no row")
        vlen = struct.unpack(">i", body[off: off + 4])[0]
        return "release_version " + body[off + 4: off + 4 + vlen].decode()


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("kafka", "cql"):
        print(__doc__, file=sys.stderr)
        return 2
    host, port = sys.argv[2].rsplit(":", 1)
    try:
        fn = probe_kafka if sys.argv[1] == "kafka" else probe_cql
        print(fn(host, int(port)))
        return 0
    except Exception as e:  # noqa: BLE001 - a probe reports any failure the same way
        print(f"not ready: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
