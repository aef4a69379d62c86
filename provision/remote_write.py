"""A Prometheus remote-write request, built by hand: a forger's push, for the tests that
prove the monitor refuses one without the agent's login (and stores the same bytes when
the login is right, so a refusal is not a malformed request).

The format is Prometheus's remote-write 1.0: a WriteRequest protobuf, compressed with
snappy's block format. Both are encoded here in a few lines (a protobuf message of three
kinds of field; snappy literals only, which every decoder accepts) rather than adding a
protobuf and a snappy library to the test environment for one request.
"""

from __future__ import annotations

import struct


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def write_request(labels: dict[str, str], value: float, timestamp_ms: int) -> bytes:
    """WriteRequest{timeseries: [TimeSeries{labels, samples: [Sample{value, timestamp}]}]}."""
    series = b"".join(
        _field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in sorted(labels.items())
    )
    sample = b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(timestamp_ms)
    return _field(1, series + _field(2, sample))


def snappy_block(data: bytes) -> bytes:
    """Snappy's block format with literal elements only (at most 65,536 bytes each)."""
    out = bytearray(_varint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i : i + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + struct.pack("<H", n)
        out += chunk
    return bytes(out)
