"""What a cut or a split makes, decided without SQLite: exact fits, one tag per batch, batches that
end inside a row, the per-call bound; and where an output's store files are."""

from array import array

import pytest

from fluent_ld.encode import pack_lengths
from fluent_ld.store import store_file, worker_files
from fluent_ld.store.batches import (
    Batch,
    cut_is_due,
    pack_segments,
    plan_cuts,
    plan_split,
    segment_slice,
    split_segments,
    unpack_segments,
)
from fluent_ld.store.dead_letters import tag_runs


def cuts(rows, max_body, max_records=100, seplen=1, framing=2, limit=100):
    return [(c.tag, c.segments, list(c.lengths), c.nbytes, c.oldest_ms) for c in plan_cuts(rows, max_body, max_records, seplen, framing, limit)]


def test_a_batch_is_filled_to_exactly_max_body_across_rows():
    # "[" + 3 + "," + 3 + "," + 3 + "]" = 13 bytes: rows 1 and 2 fill one batch exactly.
    rows = [(1, None, [3, 3], 0, 50), (2, None, [3, 4], 0, 40)]
    assert cuts(rows, 13) == [
        (None, [(1, 0, 2), (2, 0, 1)], [3, 3, 3], 9, 40),
        (None, [(2, 1, 2)], [4], 4, 40),
    ]
    # One byte less: the third event waits for the next batch.
    assert cuts(rows, 12)[0] == (None, [(1, 0, 2)], [3, 3], 6, 50)


def test_records_limit_a_tag_change_and_taken_events():
    rows = [(1, "a", [1, 1, 1, 1, 1], 2, 7), (2, "b", [1], 0, 8)]  # row 1: its first two already taken
    assert cuts(rows, 10_000, max_records=2, seplen=0, framing=0) == [
        ("a", [(1, 2, 4)], [1, 1], 2, 7),
        ("a", [(1, 4, 5)], [1], 1, 7),  # a new tag starts a new batch
        ("b", [(2, 0, 1)], [1], 1, 8),
    ]


def test_a_cut_stops_at_its_limit_before_reading_further_rows():
    seen = []

    def rows():
        for i in range(1, 100):
            seen.append(i)
            yield (i, None, [5] * 4, 0, i)

    made = list(plan_cuts(rows(), 2 + 4 * 5 + 3, 100, 1, 2, limit=3))  # one row per batch
    assert [c.segments for c in made] == [[(1, 0, 4)], [(2, 0, 4)], [(3, 0, 4)]]
    assert seen == [1, 2, 3, 4]  # the fourth row only shows the third batch full


def test_nothing_waiting_cuts_nothing():
    assert cuts([], 100) == []


def test_when_a_cut_is_due():
    assert not cut_is_due(None, None, None, 10.0, 1.0, 100, 10)  # nothing waiting
    assert cut_is_due(8.0, 5, 1, 10.0, 1.0, 100, 10)  # the oldest waited past the linger
    assert not cut_is_due(9.5, 5, 1, 10.0, 1.0, 100, 10)
    assert cut_is_due(9.5, 99, 1, 10.0, 1.0, 100, 10)  # a full body is waiting
    assert cut_is_due(9.5, 5, 10, 10.0, 1.0, 100, 10)  # max_records are waiting


def test_segments_round_trip_and_split_inside_a_row():
    segments = [(7, 0, 3), (9, 2, 6)]
    assert unpack_segments(pack_segments(segments)) == segments
    assert split_segments(segments, 3) == ([(7, 0, 3)], [(9, 2, 6)])
    assert split_segments(segments, 5) == ([(7, 0, 3), (9, 2, 4)], [(9, 4, 6)])
    assert split_segments(segments, 1) == ([(7, 0, 1)], [(7, 1, 3), (9, 2, 6)])


def test_split_halves_hold_the_batch_in_order():
    frags = [b"aa", b"b", b"cccc", b"dd", b"e"]
    batch = Batch(1, "p", None, b",".join(frags), pack_lengths([len(f) for f in frags]), 5, 10, 1, 0.0, 0, pack_segments([(3, 1, 4), (4, 0, 2)]))
    first, second = plan_split(batch, 1)
    assert (first.data, list(first.lengths), first.segments) == (b"aa,b", [2, 1], [(3, 1, 3)])
    assert (second.data, list(second.lengths), second.segments) == (b"cccc,dd,e", [4, 2, 1], [(3, 3, 4), (4, 0, 2)])
    one = Batch(1, "p", None, b"x", pack_lengths([1]), 1, 1, 1, 0.0, 0, pack_segments([(3, 0, 1)]))
    with pytest.raises(ValueError):
        plan_split(one, 1)


def test_segment_slice_of_a_row():
    lengths = array("I", [2, 3, 4, 5])  # "aa,bbb,cccc,ddddd"
    assert segment_slice(lengths, 1, 3, 1) == (3, 8)  # "bbb,cccc"
    assert segment_slice(lengths, 0, 1, 0) == (0, 2)


def test_readmitted_events_are_one_row_per_run_of_one_tag():
    assert tag_runs([("a", b"1"), ("a", b"2"), ("b", b"3"), ("a", b"4")]) == [("a", [b"1", b"2"]), ("b", [b"3"]), ("a", [b"4"])]
    assert tag_runs([]) == []


def test_an_outputs_store_files(tmp_path):
    folder = str(tmp_path / "store[1]")  # glob characters in the folder and the id are literal
    assert store_file(folder, "ld*", 3) == f"{folder}/ld*-worker3.sqlite3"
    assert worker_files(folder, "ld*") == [(0, f"{folder}/ld*-worker0.sqlite3")]  # none yet: worker 0's
    (tmp_path / "store[1]").mkdir()
    for name in ("ld*-worker10.sqlite3", "ld*-worker2.sqlite3", "ld*-workerx.sqlite3", "ld-worker1.sqlite3", "ld*-worker2.sqlite3.lock"):
        (tmp_path / "store[1]" / name).write_bytes(b"")
    assert worker_files(folder, "ld*") == [(2, store_file(folder, "ld*", 2)), (10, store_file(folder, "ld*", 10))]


def test_an_event_over_the_limit_goes_alone_rather_than_stopping_every_cut():
    # A replayed dead letter, or a chunk_limit_size lowered since the event was stored.
    rows = [(1, None, [3, 20, 3], 0, 50), (2, None, [3], 0, 40)]
    assert cuts(rows, 13) == [
        (None, [(1, 0, 1)], [3], 3, 50),
        (None, [(1, 1, 2)], [20], 20, 50),
        (None, [(1, 2, 3), (2, 0, 1)], [3, 3], 6, 40),
    ]
