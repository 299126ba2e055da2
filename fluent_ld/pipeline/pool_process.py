"""The program a pool process runs (``python -m fluent_ld.pipeline.pool_process FD``).

It talks to its node over one end of a socket pair: pickles whose large byte strings travel beside
them (see :func:`pack`), one request at a time.
First it receives the encoders of the node's outputs (by plugin id) and answers ``("ready", pid)``;
then each job ``(job_id, output_id, tag, frame, decoding)`` is answered ``(job_id, "ok",
Admitted)``, ``(job_id, "protocol", reason)`` for a request that is not the forward protocol, or
``(job_id, "error", reason)`` for anything else (it goes on with the next job). When the node goes
away (end of stream), it exits.
"""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import signal
import socket
import struct
import sys
from typing import Any

from fluent_ld.forward.codec import ProtocolError
from fluent_ld.pipeline.admission import encode_frame

# A message: HEAD (the pickle's length, how many out-of-band buffers follow), one LENGTH per buffer,
# the pickle (protocol 5), then the buffers. The bytes of a request and of its encoded events travel
# as out-of-band buffers (see Frame and Encoded): never copied into a pickle, never joined.
HEAD = struct.Struct(">II")
LENGTH = struct.Struct(">Q")


def pack(message: object) -> list[Any]:
    """``message`` as the parts of one message, to be sent in order (with ``sendmsg``)."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    head = HEAD.pack(len(body), len(raws)) + b"".join(LENGTH.pack(r.nbytes) for r in raws)
    return [head, body, *raws]


def unpack(body: bytes | bytearray | mmap.mmap, buffers: list[Any]) -> object:
    return pickle.loads(body, buffers=buffers)


def send(sock: socket.socket, message: object) -> None:
    parts = [memoryview(p).cast("B") for p in pack(message)]
    while parts:
        sent = sock.sendmsg(parts[:_IOV_MAX])
        while sent:
            if sent >= parts[0].nbytes:
                sent -= parts.pop(0).nbytes
            else:
                parts[0] = parts[0][sent:]
                sent = 0


def receive(sock: socket.socket) -> Any:
    """The next message, or None at the end of the stream."""
    head = _exactly(sock, HEAD.size)
    if head is None:
        return None
    size, count = HEAD.unpack(head)
    lengths = _exactly(sock, LENGTH.size * count) if count else bytearray()
    body = _exactly(sock, size)
    if lengths is None or body is None:
        return None
    buffers = []
    for (length,) in LENGTH.iter_unpack(lengths):
        buffer = _exactly(sock, length)
        if buffer is None:
            return None
        buffers.append(buffer)
    return unpack(body, buffers)


def buffer(size: int) -> bytearray | mmap.mmap:
    """A writable buffer to receive ``size`` bytes into. A large one is an anonymous mapping: its
    pages are zeroed by the kernel as the data arrives (in ``recv_into``, without the GIL), not
    all at once by ``bytearray(size)`` first."""
    return bytearray(size) if size < _MAPPED else mmap.mmap(-1, size)


def _exactly(sock: socket.socket, size: int) -> bytearray | mmap.mmap | None:
    buf = buffer(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buf


_IOV_MAX = 64
_MAPPED = 1 << 20


def serve(sock: socket.socket) -> None:
    encoders = receive(sock)
    if encoders is None:
        return
    assert isinstance(encoders, dict)
    gc.freeze()  # the encoders live as long as the process: the collector need not scan them
    send(sock, ("ready", os.getpid()))
    while (job := receive(sock)) is not None:
        job_id, output_id, tag, frame, decoding = job
        answer: tuple[Any, str, Any]
        try:
            answer = (job_id, "ok", encode_frame(frame, tag, decoding, encoders.get(output_id)))
        except ProtocolError as exc:
            answer = (job_id, "protocol", str(exc))
        except Exception as exc:  # a bug or an exhausted resource: this request only
            answer = (job_id, "error", f"{type(exc).__name__}: {exc}")
        del job, frame
        send(sock, answer)


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the node stops the pool itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the node is gone


if __name__ == "__main__":
    main()
