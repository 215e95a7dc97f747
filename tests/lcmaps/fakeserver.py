"""A stand-in for `poolmgr serve` that speaks the line protocol on a Unix socket.

Run as a program: ``python fakeserver.py SOCKET [--record FILE] [--reply-file FILE
[--no-newline] | --silent | --hangup]``. Without a canned behaviour it keeps a
small in-memory pool per FQAN so that MAP, VERIFY and PING behave like the real
service. With ``--reply-file`` every MAP or VERIFY gets the bytes of that file,
read afresh for each request, so one server can play many replies. Every request
line is appended to the record file as JSON, so tests can see exactly what the
plugin sent.
"""

import argparse
import json
import os
import socketserver
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

LINE_MAX = 16384

_ENCODE = {"%": "%25", "\t": "%09", "\n": "%0A", "\r": "%0D"}


@dataclass(frozen=True)
class Pool:
    """One fake pool: which FQAN selects it and the ids it hands out."""

    name: str
    fqan: str | None
    first_uid: int
    gid: int
    sgids: tuple[int, ...]


POOLS = (
    Pool("atlasprd", "/atlas/Role=production", 21000, 2100, (2000,)),
    Pool("atlas", "/atlas", 20000, 2000, ()),
    Pool("cms", "/cms", 30000, 3000, (3001, 3002)),
    Pool("dnonly", None, 40000, 4000, ()),
)


def encode_field(text: str) -> str:
    """Percent-encode the four bytes the protocol reserves."""
    return "".join(_ENCODE.get(char, char) for char in text)


def decode_field(text: str) -> str:
    """Undo the percent-encoding; either hex case is accepted."""
    raw = text.encode()
    out = bytearray()
    index = 0
    while index < len(raw):
        if raw[index] == ord("%"):
            out.append(int(raw[index + 1 : index + 3], 16))
            index += 3
        else:
            out.append(raw[index])
            index += 1
    return out.decode()


def select_pool(fqans: list[str]) -> Pool | None:
    """The pool of the first FQAN that matches one, or the DN-only pool."""
    if not fqans:
        return POOLS[-1]
    for fqan in fqans:
        for pool in POOLS:
            if pool.fqan and (fqan == pool.fqan or fqan.startswith(pool.fqan + "/")):
                return pool
    return None


@dataclass
class Leases:
    """In-memory leases keyed by (DN, pool name)."""

    by_key: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, verb: str, dn: str, fqans: list[str]) -> str:
        """The reply line for one MAP or VERIFY request."""
        pool = select_pool(fqans)
        if pool is None:
            return f"ERR\tNO_POOL\tno pool matches {encode_field(fqans[0])}"

        with self.lock:
            index = self.by_key.get((dn, pool.name))
            if index is None and verb == "VERIFY":
                return "ERR\tNO_LEASE\tno lease for this DN"
            if index is None:
                index = sum(1 for key in self.by_key if key[1] == pool.name) + 1
                self.by_key[(dn, pool.name)] = index

        account = f"{pool.name}{index:03d}"
        sgids = ",".join(str(gid) for gid in pool.sgids)
        uid = pool.first_uid + index
        return f"OK\t{account}\t{uid}\t{pool.gid}\t{sgids}\tlease-{account}"


class Handler(socketserver.StreamRequestHandler):
    """Answer request lines on one connection, in order."""

    server: "FakeServer"

    def handle(self) -> None:
        try:
            self._answer_lines()
        except ConnectionError:
            return

    def _answer_lines(self) -> None:
        """Read request lines until the client closes; reply to each in turn."""
        while True:
            line = self.rfile.readline(LINE_MAX + 1)
            if not line:
                return
            self.server.record(line)
            if self.server.behaviour == "silent":
                self.server.stopped.wait()
                return
            if self.server.behaviour == "hangup":
                return
            reply = self.server.reply_to(line)
            if self.server.behaviour == "no-newline":
                self.wfile.write(reply)
                return
            self.wfile.write(reply + b"\n")
            self.wfile.flush()


class FakeServer(socketserver.ThreadingUnixStreamServer):
    """The Unix socket server with its canned or pool-based replies."""

    daemon_threads = True

    def __init__(
        self,
        path: str,
        record_path: str | None,
        reply_path: str | None,
        behaviour: str,
    ) -> None:
        super().__init__(path, Handler)
        self.record_path = record_path
        self.reply_path = reply_path
        self.behaviour = behaviour
        self.stopped = threading.Event()
        self.leases = Leases()
        self.record_lock = threading.Lock()

    def record(self, line: bytes) -> None:
        """Append the raw request line, as Latin-1 text, to the record file."""
        if self.record_path is None:
            return
        with self.record_lock, open(self.record_path, "a") as out:
            out.write(json.dumps({"raw": line.decode("latin-1")}) + "\n")

    def reply_to(self, line: bytes) -> bytes:
        """The reply for one raw request line, without its newline."""
        if not line.endswith(b"\n") or len(line) > LINE_MAX:
            return b"ERR\tBAD_REQUEST\tline too long or unterminated"
        fields = line[:-1].decode(errors="replace").split("\t")
        if fields == ["PING"]:
            return b"OK\tpong"
        if self.reply_path is not None:
            return Path(self.reply_path).read_bytes()
        if fields[0] not in ("MAP", "VERIFY") or len(fields) < 2:
            return b"ERR\tBAD_REQUEST\tunknown request"
        decoded = [decode_field(value) for value in fields[1:]]
        return self.leases.answer(fields[0], decoded[0], decoded[1:]).encode()


def main(argv: list[str]) -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket")
    parser.add_argument("--record")
    parser.add_argument("--reply-file", help="answer MAP/VERIFY with these bytes")
    parser.add_argument(
        "--no-newline", action="store_true", help="send the reply unterminated"
    )
    parser.add_argument("--silent", action="store_true", help="never answer")
    parser.add_argument("--hangup", action="store_true", help="close, no answer")
    args = parser.parse_args(argv)

    behaviour = "answer"
    for name in ("no_newline", "silent", "hangup"):
        if getattr(args, name):
            behaviour = name.replace("_", "-")

    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server = FakeServer(args.socket, args.record, args.reply_file, behaviour)
    Path(args.socket).chmod(0o600)
    try:
        server.serve_forever()
    finally:
        server.stopped.set()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
