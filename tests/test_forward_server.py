"""The forward source over real sockets: acks, order, failures, backpressure, limits, options."""

import socket
import time

import pytest
from fluent import sender
from harness import CAPTURE_CONF, RawClient, RunningNode, capture_node, forward_request

from fluent_ld.sources.forward_connection import Pause

BASE = CAPTURE_CONF
node = capture_node


def test_fluent_logger_message_mode_with_int_and_nanosecond_times():
    with node() as n:
        plain = sender.FluentSender("signal", port=n.port)
        precise = sender.FluentSender("signal", port=n.port, nanosecond_precision=True)
        assert plain.emit_with_time("web", 1_749_200_000, {"event": "Signed Up", "user_id": "u1"})
        assert precise.emit_with_time("web", 1_749_200_000.25, {"event": "Order Completed"})
        plain.close()
        precise.close()
        records = n.wait_records(2)
    assert records[0] == ("signal.web", 1_749_200_000 * 10**9, {"event": "Signed Up", "user_id": "u1"})
    assert records[1][0] == "signal.web" and records[1][2] == {"event": "Order Completed"}
    assert records[1][1] == 1_749_200_000 * 10**9 + 250_000_000


def test_ack_echoes_the_token_in_its_type_and_bytes():
    with node() as n, RawClient(n.port) as c:
        c.send(forward_request("a", [{"k": 1}], chunk="Zm9vYmFy\n"))
        assert c.raw_reply(15) == b"\x81\xa3ack\xa9Zm9vYmFy\n"
        c.send(forward_request("a", [{"k": 2}], chunk=b"\x00\x01\x02"))
        assert c.raw_reply(10) == b"\x81\xa3ack\xc4\x03\x00\x01\x02"


def test_no_reply_without_a_chunk_and_acks_in_request_order():
    with node() as n, RawClient(n.port) as c:
        wire = forward_request("a", [{"n": -1}])  # no chunk: no ack
        wire += b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(20))
        c.send(wire)
        assert [c.reply() for _ in range(20)] == [{"ack": f"c{i}"} for i in range(20)]
        records = n.wait_records(21)
    assert [r[2]["n"] for r in records] == list(range(-1, 20))


def test_a_failed_admit_is_not_acked_and_the_connection_goes_on():
    with node() as n, RawClient(n.port) as c:
        n.call(setattr, n.output(), "fail", 1)
        c.send(forward_request("a", [{"n": 1}], chunk="first") + forward_request("a", [{"n": 2}], chunk="second"))
        assert c.reply() == {"ack": "second"}
        c.send(forward_request("a", [{"n": 1}], chunk="first-again"))  # the client resends
        assert c.reply() == {"ack": "first-again"}
        assert [r[2]["n"] for r in n.wait_records(2)] == [2, 1]
        assert n.source.stats["admit_failures"] == 1


def test_backpressure_pauses_the_connection_and_acks_once_there_is_room():
    with node() as n, RawClient(n.port) as c:
        n.call(setattr, n.output(), "full", 1)
        c.send(forward_request("a", [{"n": 1}], chunk="c1"))
        c.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            c.reply()  # nothing acked while the destination is full
        assert n.call(lambda: Pause.OUTPUT_FULL in next(iter(n.source.connections)).pause_reasons)
        n.call(lambda: n.output().room.set())
        c.sock.settimeout(5)
        assert c.reply() == {"ack": "c1"}
        c.send(forward_request("a", [{"n": 2}], chunk="c2"))
        assert c.reply() == {"ack": "c2"}
        assert [r[2]["n"] for r in n.wait_records(2)] == [1, 2]


def test_requests_before_a_malformed_frame_are_kept_and_acked():
    with node() as n, RawClient(n.port) as c:
        c.send(forward_request("a", [{"n": 1}], chunk="ok") + b"\xc1garbage")
        assert c.reply() == {"ack": "ok"}
        assert c.closed_by_server()
        assert n.wait_records(1)[0][2] == {"n": 1}
        assert n.source.stats["protocol_errors"] == 1


def test_tag_rewriting_and_source_keys():
    with node("tag fixed\n  add_tag_prefix ld\n  source_address_key from_ip\n  source_hostname_key from_host") as n:
        with RawClient(n.port) as c:
            c.send(forward_request("orig", [{"k": 1}], chunk="x"))
            assert c.reply() == {"ack": "x"}
        (record,) = n.wait_records(1)
    assert record[0] == "ld.fixed"
    assert record[2]["from_ip"] == "127.0.0.1"
    assert record[2]["from_host"]  # a name, or the address when there is no reverse record


def test_udp_heartbeat_is_answered_with_a_zero_byte():
    with node() as n:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)
        udp.sendto(b"", ("127.0.0.1", n.port))
        assert udp.recvfrom(16)[0] == b"\0"
        udp.close()


def test_tcp_heartbeat_and_connect_close_probes_are_harmless():
    with node() as n:
        socket.create_connection(("127.0.0.1", n.port)).close()  # Fluentd's transport heartbeat
        with RawClient(n.port) as c:
            c.send(b"\xc0\xc0" + forward_request("a", [{}], chunk="after-heartbeats"))
            assert c.reply() == {"ack": "after-heartbeats"}


def test_deny_keepalive_closes_after_the_first_request():
    with node("deny_keepalive true") as n, RawClient(n.port) as c:
        c.send(forward_request("a", [{}], chunk="only"))
        assert c.reply() == {"ack": "only"}
        assert c.closed_by_server()


def test_max_connections_refuses_the_extra_one_and_serves_the_others():
    with node("max_connections 2") as n:
        a, b = RawClient(n.port), RawClient(n.port)
        a.send(forward_request("a", [{}], chunk="a"))
        assert a.reply() == {"ack": "a"}
        b.send(forward_request("a", [{}], chunk="b"))
        assert b.reply() == {"ack": "b"}
        extra = RawClient(n.port)
        assert extra.closed_by_server()
        assert n.source.stats["connections_refused"] == 1
        a.close()
        time.sleep(0.2)
        with RawClient(n.port) as again:
            again.send(forward_request("a", [{}], chunk="again"))
            assert again.reply() == {"ack": "again"}
        b.close()


def test_idle_connections_are_closed():
    with node("idle_timeout 200ms") as n, RawClient(n.port) as c:
        assert c.closed_by_server(timeout=5)
        assert n.source.stats["idle_closed"] == 1


def test_a_request_over_chunk_size_limit_closes_its_connection_unacked():
    with node("chunk_size_limit 2k") as n:
        with RawClient(n.port) as c:
            c.send(forward_request("a", [{"big": "x" * 4096}], chunk="big"))
            assert c.closed_by_server()
        with RawClient(n.port) as c:
            c.send(forward_request("a", [{"small": 1}], chunk="small"))
            assert c.reply() == {"ack": "small"}
        assert [r[2] for r in n.wait_records(1)] == [{"small": 1}]


def test_unix_socket(tmp_path):
    path = tmp_path / "fwd.sock"
    with node(f"path {path}") as n:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        with RawClient(sock=s) as c:
            c.send(forward_request("unix", [{"k": 1}], chunk="u"))
            assert c.reply() == {"ack": "u"}
        assert n.wait_records(1)[0][0] == "unix"
    assert not path.exists()


def test_port_in_use_is_a_start_error_naming_the_line():
    from fluent_ld.plugin import StartError

    with node() as first:
        with pytest.raises(StartError, match=r"^test\.conf:2: <source> @type forward: cannot listen on 127\.0\.0\.1:\d+"):
            with RunningNode(BASE.format(extra="").replace("port 0", f"port {first.port}")):
                pass


def test_shutdown_admits_and_acks_what_was_already_received():
    with node() as n:
        n.call(setattr, n.output(), "delay", 0.2)
        c = RawClient(n.port)
        c.send(b"".join(forward_request("a", [{"n": i}], chunk=f"c{i}") for i in range(3)))
        time.sleep(0.05)
    assert [c.reply() for _ in range(3)] == [{"ack": f"c{i}"} for i in range(3)]
    assert len(n.output().records) == 3
    c.close()
