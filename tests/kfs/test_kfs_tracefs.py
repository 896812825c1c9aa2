"""tracefs rows: live formats and ids, the ftrace text of records, enable files, trace
truncation and the trace_pipe stream."""

from __future__ import annotations

import errno

import pytest
from kfs_helpers import make_kernel, read, write

from ksmfs.kfs import TraceReader, Tree, read_stream
from ksmfs.kfs.errors import KsmError
from ksmfs.kfs.tracefs import EVENT_IDS, hash_pointer, render_record

T = "sys/kernel/tracing/"
EV = T + "events/ksm/"

# Read from a temporary tracefs mount on the reference machine (Linux 6.18.44).
LIVE_FORMAT_MERGE_WITH_KSM_PAGE = """\
name: ksm_merge_with_ksm_page
ID: 744
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * ksm_page;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned long pfn;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rmap_item;\toffset:24;\tsize:8;\tsigned:0;
\tfield:void * mm;\toffset:32;\tsize:8;\tsigned:0;
\tfield:int err;\toffset:40;\tsize:4;\tsigned:1;

print fmt: "%spfn %lu rmap_item %p mm %p error %d", (REC->ksm_page ? "ksm " : ""), \
REC->pfn, REC->rmap_item, REC->mm, REC->err
"""

LIVE_FORMAT_START_SCAN = """\
name: ksm_start_scan
ID: 749
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int seq;\toffset:8;\tsize:4;\tsigned:1;
\tfield:u32 rmap_entries;\toffset:12;\tsize:4;\tsigned:0;

print fmt: "seq %d rmap size %d", REC->seq, REC->rmap_entries
"""


def test_formats_and_ids_are_the_live_ones(tree):
    assert read(tree, EV + "ksm_merge_with_ksm_page/format") == LIVE_FORMAT_MERGE_WITH_KSM_PAGE
    assert read(tree, EV + "ksm_start_scan/format") == LIVE_FORMAT_START_SCAN
    for event, ident in EVENT_IDS.items():
        assert read(tree, EV + f"{event}/id") == f"{ident}\n"
        assert read(tree, EV + f"{event}/format").startswith(f"name: {event}\nID: {ident}\n")


def test_enable_files(tree):
    k = tree.kernel
    assert read(tree, EV + "enable") == "0\n"
    write(tree, EV + "ksm_start_scan/enable", b"1\n")
    assert read(tree, EV + "ksm_start_scan/enable") == "1\n"
    assert "ksm_start_scan" in k.trace.enabled
    assert read(tree, EV + "enable") == "X\n"
    write(tree, EV + "enable", b"1")
    assert read(tree, EV + "enable") == "1\n"
    assert set(k.version.trace_events) <= k.trace.enabled
    write(tree, EV + "enable", b"0\n")
    assert read(tree, EV + "enable") == "0\n" and not k.trace.enabled
    for bad in (b"2", b"abc", b"\n"):
        with pytest.raises(KsmError) as err:
            write(tree, EV + "ksm_enter/enable", bad)
        assert err.value.errno == errno.EINVAL


def test_tracing_on(tree):
    assert read(tree, T + "tracing_on") == "1\n"
    write(tree, T + "tracing_on", b"0\n")
    assert read(tree, T + "tracing_on") == "0\n" and not tree.kernel.trace.tracing_on
    write(tree, T + "tracing_on", b"5")
    assert read(tree, T + "tracing_on") == "1\n"


def test_record_line_format():
    """trace_print_context(): "%16s-%-7d [%03d] " irq flags, " %5llu.%06lu: "."""
    from ksmfs.kernel.trace import TraceRecord

    r = TraceRecord(1, 1234_567_890_123, 47, "ksmd", "ksm_start_scan",
                    {"seq": 3, "rmap_entries": 10})  # fmt: skip
    assert render_record(r) == (
        "            ksmd-47      [000] .....  1234.567890: ksm_start_scan: seq 3 rmap size 10\n"
    )
    m = TraceRecord(2, 5_000_000, 101, "worker", "ksm_merge_with_ksm_page",
                    {"ksm_page": None, "pfn": 77, "rmap_item": 9, "mm": 3, "err": 0})  # fmt: skip
    line = render_record(m)
    assert line.startswith("          worker-101     [000] .....     0.005000: ")
    rmap, mm = hash_pointer(9, "rmap_item"), hash_pointer(3, "mm")
    assert line.endswith(f"ksm_merge_with_ksm_page: pfn 77 rmap_item {rmap} mm {mm} error 0\n")
    ksm = TraceRecord(3, 0, 47, "ksmd", "ksm_merge_with_ksm_page",
                      {"ksm_page": 0, "pfn": 0, "rmap_item": 1, "mm": 1, "err": -14})  # fmt: skip
    assert ": ksm_merge_with_ksm_page: ksm pfn 0 rmap_item " in render_record(ksm)
    assert render_record(ksm).endswith(" error -14\n")
    rm = TraceRecord(4, 0, 47, "ksmd", "ksm_remove_rmap_item",
                     {"pfn": -1, "rmap_item": 1, "mm": 1})  # fmt: skip
    assert ": ksm_remove_rmap_item: pfn 18446744073709551615 rmap_item " in render_record(rm)


def test_pointer_hashes():
    assert hash_pointer(None) == "0" * 16
    h = hash_pointer(0xFFFF888012345678, "mm")
    assert len(h) == 16 and h.startswith("00000000")
    assert h == hash_pointer(0xFFFF888012345678, "mm")
    assert h != hash_pointer(0xFFFF888012345679, "mm")
    assert hash_pointer(5, "mm") != hash_pointer(5, "rmap_item")
    assert hash_pointer(0, "rmap_item") != "0" * 16  # a real object, not NULL


def _scan_with_events(k):
    tree = Tree(k)
    write(tree, EV + "enable", b"1\n")
    write(tree, "ksmfs/control", b"spawn a pages=4 fill=value:7 mergeable\n")
    write(tree, "sys/kernel/mm/ksm/run", b"1\n")
    for _ in range(3):
        k.ksm_do_scan(100)
    return tree


def test_trace_shows_the_records_and_truncate_clears():
    k = make_kernel("6.18")
    tree = _scan_with_events(k)
    text = read(tree, T + "trace")
    assert text.startswith("# tracer: nop\n#\n# entries-in-buffer/entries-written: ")
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert len(body) == len(k.trace.records) > 0
    assert any(": ksm_start_scan: seq " in ln for ln in body)
    assert any(": ksm_enter: mm 00000000" in ln for ln in body)
    node = tree.lookup(("sys", "kernel", "tracing", "trace"))
    assert node.spec.store(k, None, b"\n") == 1  # writes are accepted and ignored
    node.spec.truncate(k, None)  # what an O_TRUNC open does
    assert not k.trace.records
    assert "# entries-in-buffer/entries-written: 0/" in read(tree, T + "trace")


def test_trace_pipe_consumes():
    k = make_kernel("6.18")
    tree = _scan_with_events(k)
    node = tree.lookup(("sys", "kernel", "tracing", "trace_pipe"))
    assert node.spec.stream and node.spec.show is None
    n = len(k.trace.records)
    reader = TraceReader()
    first = read_stream(k, reader, max_bytes=1)  # whole lines only, at least one
    assert first.count(b"\n") == 1
    rest = read_stream(k, reader)
    assert first.count(b"\n") + rest.count(b"\n") == n
    assert read_stream(k, reader) == b""
    assert not k.trace.records  # consumed: gone from `trace` too
    k.ksm_do_scan(100)
    new = len(k.trace.records)
    assert new > 0 and read_stream(k, reader).count(b"\n") == new


def test_no_events_before_6_4():
    tree = Tree(make_kernel("6.1"))
    assert tree.listdir(("sys", "kernel", "tracing")) == ["trace", "trace_pipe", "tracing_on"]


def _header_counts(tree) -> tuple[int, int]:
    first = read(tree, T + "trace").splitlines()[2]
    assert first.startswith("# entries-in-buffer/entries-written: ") and first.endswith("#P:2")
    entries, written = first.split(": ")[1].split()[0].split("/")
    return int(entries), int(written)


def test_entries_written_counts_what_the_full_ring_dropped():
    """entries-written = records in the ring + overrun: a consuming read lowers both
    numbers, truncation resets both (measured on the live 6.18 ring, see trace.py)."""
    k = make_kernel("6.18")
    tree = Tree(k)
    k.trace.limit = 10
    write(tree, EV + "ksm_start_scan/enable", b"1\n")
    for seq in range(25):
        k.trace.emit(seq, 47, "ksmd", "ksm_start_scan", seq=seq, rmap_entries=0)
    assert _header_counts(tree) == (10, 25)
    assert [r.fields["seq"] for r in k.trace.records] == list(range(15, 25))
    assert read_stream(k, TraceReader(), max_bytes=200).count(b"\n") == 2
    assert _header_counts(tree) == (8, 23)
    write(tree, T + "tracing_on", b"0\n")
    k.trace.emit(99, 47, "ksmd", "ksm_start_scan", seq=99, rmap_entries=0)
    assert _header_counts(tree) == (8, 23)  # nothing is written while tracing is off
    tree.lookup(("sys", "kernel", "tracing", "trace")).spec.truncate(k, None)
    assert _header_counts(tree) == (0, 0)


def test_a_filter_keeps_only_matching_records():
    k = make_kernel("6.18")
    tree = _scan_with_events(k)
    write(tree, EV + "ksm_start_scan/filter", b"seq >= 4 && comm ~ \"ks*\"\n")
    assert read(tree, EV + "ksm_start_scan/filter") == 'seq >= 4 && comm ~ "ks*"\n'
    k.trace.clear()
    for _ in range(6):
        k.ksm_do_scan(100)
    seqs = [r.fields["seq"] for r in k.trace.records if r.event == "ksm_start_scan"]
    stops = [r.fields["seq"] for r in k.trace.records if r.event == "ksm_stop_scan"]
    assert seqs and min(seqs) >= 4 and len(stops) > len(seqs)
    write(tree, EV + "ksm_start_scan/filter", b"0\n")
    assert read(tree, EV + "ksm_start_scan/filter") == "none\n"
    k.trace.clear()
    k.ksm_do_scan(100)
    assert any(r.event == "ksm_start_scan" for r in k.trace.records)


def test_a_refused_filter_shows_its_error_and_filters_nothing():
    k = make_kernel("6.18")
    tree = _scan_with_events(k)
    with pytest.raises(KsmError) as err:
        write(tree, EV + "ksm_start_scan/filter", b"nosuch == 1\n")
    assert err.value.errno == errno.EINVAL
    assert read(tree, EV + "ksm_start_scan/filter") == (
        "nosuch == 1\n       ^\nparse_error: Field not found\n\n"
    )
    k.trace.clear()
    k.ksm_do_scan(100)
    assert any(r.event == "ksm_start_scan" for r in k.trace.records)


def test_the_system_filter_sets_every_event_that_has_the_fields():
    tree = Tree(make_kernel("6.18"))
    before = read(tree, EV + "filter")
    assert write(tree, EV + "filter", b"pfn > 1\n") == 8
    assert read(tree, EV + "filter") == before
    assert read(tree, EV + "ksm_remove_ksm_page/filter") == "pfn > 1\n"
    assert read(tree, EV + "ksm_start_scan/filter").endswith(
        "^\nparse_error: Couldn't find or set field in one of a subsystem's events\n\n"
    )
    write(tree, EV + "filter", b"0\n")
    assert read(tree, EV + "ksm_remove_ksm_page/filter") == "none\n"


def test_triggers_list_act_and_go():
    k = make_kernel("6.18")
    tree = _scan_with_events(k)
    trig = EV + "ksm_stop_scan/trigger"
    assert read(tree, trig).startswith("# Available triggers:\n")
    write(tree, trig, b"traceoff if seq > 4\n")
    write(tree, EV + "ksm_start_scan/trigger", b"disable_event:ksm:ksm_enter:1\n")
    with pytest.raises(KsmError) as err:
        write(tree, trig, b"traceon\n")  # traceon and traceoff are one trigger type
    assert err.value.errno == errno.EEXIST
    assert read(tree, trig) == "traceoff:unlimited if seq > 4\n"
    assert read(tree, EV + "ksm_enter/enable") == "1*\n"  # soft mode: a trigger's target
    k.trace.clear()
    for _ in range(5):
        k.ksm_do_scan(100)
    stops = [r.fields["seq"] for r in k.trace.records if r.event == "ksm_stop_scan"]
    assert stops[-1] == 5 and read(tree, T + "tracing_on") == "0\n"
    assert "ksm_enter" not in k.trace.enabled
    assert read(tree, EV + "ksm_start_scan/trigger") == (
        "disable_event:ksm:ksm_enter:count=0\n"
    )
    write(tree, trig, b"!traceoff\n")
    write(tree, EV + "ksm_start_scan/trigger", b"!disable_event:ksm:ksm_enter\n")
    assert read(tree, trig).startswith("# Available triggers:\n")
    assert read(tree, EV + "ksm_enter/enable") == "0\n"
    for bad in (b"0\n", b"\n", b"bogus\n", b"traceoff:xx\n", b"enable_event:ksm:nosuch\n"):
        with pytest.raises(KsmError) as err:
            write(tree, trig, bad)
        assert err.value.errno == errno.EINVAL
