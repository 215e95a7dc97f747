"""One benchmark caller of ``poolmgr serve``: a new connection per mapping.

Usage: socket_client.py SOCKET DNFILE FQAN PASSES DEADLINE

Maps every DN of DNFILE (PASSES times) as the LCMAPS plugin does: connect,
send one MAP line, read one reply line, close. Prints ``ready``, waits for
a line on stdin, runs until done or DEADLINE seconds have passed, then
prints one JSON object: latencies (ms), error codes, start and end times.
Standard library only, so that starting 32 of them is cheap.
"""

import json
import socket
import sys
import time
from collections import Counter

_ENCODE = str.maketrans({"%": "%25", "\t": "%09", "\n": "%0A", "\r": "%0D"})


def request_line(dn: str, fqan: str) -> bytes:
    """Return the MAP request for dn with one FQAN, fields percent-encoded."""
    fields = ["MAP", dn.translate(_ENCODE)]
    if fqan:
        fields.append(fqan.translate(_ENCODE))
    return ("\t".join(fields) + "\n").encode()


def exchange(path: str, line: bytes) -> str:
    """Send one request on a fresh connection; return the reply's code."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(path)
        conn.sendall(line)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                return "CLOSED"
            reply += chunk
    fields = reply.split(b"\t")
    if fields[0] == b"OK":
        return ""
    return fields[1].decode(errors="replace") if len(fields) > 1 else "MALFORMED"


def main(argv: list[str]) -> int:
    path, dn_file, fqan, passes, deadline = argv[1:6]
    with open(dn_file, encoding="utf-8") as handle:
        lines = [request_line(dn.rstrip("\n"), fqan) for dn in handle if dn.strip()]
    print("ready", flush=True)
    sys.stdin.readline()

    ms: list[float] = []
    errors: Counter[str] = Counter()
    start = time.monotonic()
    stop = start + float(deadline)
    for _ in range(int(passes)):
        for line in lines:
            if time.monotonic() > stop:
                break
            began = time.perf_counter()
            try:
                code = exchange(path, line)
            except OSError as exc:
                code = f"OSERROR:{exc.errno}"
            ms.append((time.perf_counter() - began) * 1000)
            if code:
                errors[code] += 1
    result = {"ms": ms, "errors": errors, "start": start, "end": time.monotonic()}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
