"""The program a pool process runs (``python -m fluent_ld.pool_process FD``).

It talks to its node over one end of a socket pair: length-prefixed pickles, one request at a time.
First it receives the encoders of the node's outputs (by plugin id) and answers ``("ready", pid)``;
then each job ``(job_id, output_id, tag, frame, decoding)`` is answered ``(job_id, "ok",
Admitted)``, ``(job_id, "protocol", reason)`` for a request that is not the forward protocol, or
``(job_id, "error", reason)`` for anything else (it goes on with the next job). When the node goes
away (end of stream), it exits.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import struct
import sys

from fluent_ld.admission import encode_frame
from fluent_ld.forward.codec import ProtocolError

HEADER = struct.Struct(">I")


def send(sock: socket.socket, message: object) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(HEADER.pack(len(body)) + body)


def receive(sock: socket.socket) -> object | None:
    """The next message, or None at the end of the stream."""
    header = _exactly(sock, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    body = _exactly(sock, size)
    if body is None:
        return None
    return pickle.loads(body)


def _exactly(sock: socket.socket, size: int) -> bytearray | None:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buf


def serve(sock: socket.socket) -> None:
    encoders = receive(sock)
    if encoders is None:
        return
    assert isinstance(encoders, dict)
    gc.freeze()  # the encoders live as long as the process: the collector need not scan them
    send(sock, ("ready", os.getpid()))
    while (job := receive(sock)) is not None:
        job_id, output_id, tag, frame, decoding = job  # type: ignore[misc]
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
