"""DNS packets captured by the kernel → DNS exchanges (query, response, latency).

The kernel side copies every packet to or from the DNS port into a ring buffer as a
bounded prefix that starts at the IP header (IPv4 or IPv6). This module is the pure
user-space half: :func:`parse_packet` turns those bytes into a :class:`DnsPacket`, and
:class:`DnsExchanges` pairs queries with their responses into
:class:`~flowscope.core.records.RawDns` events.

The bytes are attacker-controlled. Every way they can be wrong raises
:class:`DnsParseError` and nothing else, and every loop is bounded by the input length
or a constant: names follow compression pointers only strictly backwards (so loops are
impossible), labels are at most 63 bytes and names at most 255 wire bytes, section
counts are checked against the bytes that remain, and a name already read in a message
is not read again (``Known``), so the work is linear in the message's length.

Contract details (also in docs/collector-sockets.md):

- Answers kept: A, AAAA and CNAME of class IN, with their TTL (RFC 2181: a TTL with the
  top bit set counts as 0). Every other record type is skipped.
- Names are lower-cased (DNS is case-insensitive; resolvers randomise case) and written
  in presentation form: dots between labels, ``\\.`` for a dot inside a label, ``\\DDD``
  for bytes outside printable ASCII; the root is ``.``.
- A TCP segment without payload (handshake, bare ACK) carries no DNS message: the parser
  returns ``None`` for it rather than an error. Alone, :func:`parse_packet` reads a TCP
  segment as starting with the 2-byte length prefix of a message and returns its first
  message; :class:`DnsExchanges` tracks each stream (:class:`TcpStreams`), parses only
  segments where a message starts, from there, and every message that starts in them
  (pipelined queries or responses); the others (continuations of a longer message,
  retransmits) are counted as ``tcp_skipped``. A length prefix that ends its segment
  (sent alone, or after pipelined messages) is kept and put back in front of the
  segment that starts right after it. No reassembly: a message longer than its first
  segment keeps the answers that segment holds and is ``truncated``; a prefix split
  across segments, or a header and question that continue in the next, lose the track.
- When the capture was cut short (the IP header says the packet is longer than the
  bytes we got), the answers that fit are kept and ``truncated`` is set; the header and
  question must be complete. A packet that is short by its own lengths is an error. The
  first IP fragment of a longer UDP datagram is cut short the same way (up to the UDP
  length), and so is a message with TC set (the server cut it, and may have left the
  counts as they were).
- The response code includes the EDNS extension (RFC 6891) when the OPT record is in the
  bytes we have.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

from flowscope.core.errors import CodecError
from flowscope.core.records import TCP, UDP, DnsAnswer, RawDns

RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
    16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
    22: "BADTRUNC", 23: "BADCOOKIE",
}  # fmt: skip
QTYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV",
    35: "NAPTR", 36: "KX", 37: "CERT", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS",
    44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID",
    50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 59: "CDS",
    60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS",
    99: "SPF", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG", 251: "IXFR",
    252: "AXFR", 255: "ANY", 256: "URI", 257: "CAA",
}  # fmt: skip

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1
FLAG_TC = 0x0200  # the server cut the message to fit the transport (RFC 1035 §4.1.1)
IPV4_MORE_FRAGMENTS = 0x2000

MAX_LABEL = 63
MAX_NAME_WIRE = 255  # RFC 1035 §2.3.4, including length bytes and the root's 0
# IPv6 extension headers skipped on the way to UDP/TCP; more than this many is hostile.
MAX_EXTENSION_HEADERS = 8
IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DEST_OPTS, IPV6_AH = 0, 43, 44, 60, 51
IPV6_SKIPPED = frozenset({IPV6_HOP_BY_HOP, IPV6_ROUTING, IPV6_DEST_OPTS, IPV6_AH})

T = TypeVar("T")

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_PRINTABLE = frozenset(range(0x21, 0x7F)) - {ord("."), ord("\\")}
_PLAIN_LABEL = re.compile(rb"[!-\-/-\[\]-~]*")  # printable ASCII except "." and "\\"


class DnsParseError(CodecError):
    """Captured bytes are not a DNS packet this parser accepts (``reason`` is short)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)


def rcode_name(rcode: int) -> str:
    """DNS response code → its mnemonic; unknown codes as ``RCODE<n>``."""
    return RCODE_NAMES.get(rcode, f"RCODE{rcode}")


def qtype_name(qtype: int) -> str:
    """DNS record type → its mnemonic; unknown types as ``TYPE<n>`` (RFC 3597)."""
    return QTYPE_NAMES.get(qtype, f"TYPE{qtype}")


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """The parts of one DNS message flowscope reports."""

    id: int
    is_response: bool
    rcode: str
    qname: str
    qtype: str
    answers: tuple[DnsAnswer, ...] = ()
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class DnsPacket:
    """A DNS message with the addresses and ports of the packet that carried it."""

    src: str
    sport: int
    dst: str
    dport: int
    proto: int
    message: DnsMessage


@dataclass(slots=True)
class _Segment:
    """Transport payload of a packet, and whether the capture cut it short."""

    src: str
    sport: int
    dst: str
    dport: int
    proto: int
    payload: bytes
    missing: int  # payload bytes the capture cut off (the IP header says they exist)
    seq: int = 0  # TCP sequence number of the payload's first byte

    @property
    def cut(self) -> bool:
        return self.missing > 0


# ---------------------------------------------------------------- IP and transport


def parse_packet(data: bytes) -> DnsPacket | None:
    """Parse captured bytes (from the IP header on) into a DNS packet.

    A TCP segment is read as starting with a message's length prefix, and only its first
    message is returned (:class:`DnsExchanges` reads them all). Returns ``None`` for a
    TCP segment without payload; raises :class:`DnsParseError` for anything malformed.
    """
    segment = _parse_ip(bytes(data))
    if segment.proto == TCP:
        return next(_tcp_packets(segment, None), None)
    return _packet(segment, parse_message(segment.payload, segment.cut))


def _packet(segment: _Segment, message: DnsMessage) -> DnsPacket:
    return DnsPacket(segment.src, segment.sport, segment.dst, segment.dport, segment.proto, message)


def _parse_ip(data: bytes) -> _Segment:
    if not data:
        raise DnsParseError("short-ip", "no bytes")
    version = data[0] >> 4
    if version == 4:
        return _parse_ipv4(data)
    if version == 6:
        return _parse_ipv6(data)
    raise DnsParseError("bad-ip-version", str(version))


def _parse_ipv4(data: bytes) -> _Segment:
    if len(data) < 20:
        raise DnsParseError("short-ip", f"{len(data)} bytes of IPv4 header")
    header_len = (data[0] & 0x0F) * 4
    total_len = int.from_bytes(data[2:4], "big")
    if header_len < 20 or total_len < header_len:
        raise DnsParseError("bad-ipv4-length", f"header {header_len}, total {total_len}")
    if len(data) < header_len:
        raise DnsParseError("short-ip", "IPv4 options cut off")
    fragment = int.from_bytes(data[6:8], "big")
    if fragment & 0x1FFF:
        raise DnsParseError("ip-fragment", "not the first fragment")
    src = str(ipaddress.IPv4Address(data[12:16]))
    dst = str(ipaddress.IPv4Address(data[16:20]))
    payload = data[header_len:total_len]
    missing = max(0, total_len - len(data))
    more = bool(fragment & IPV4_MORE_FRAGMENTS)
    return _parse_transport(data[9], src, dst, payload, missing, more)


def _parse_ipv6(data: bytes) -> _Segment:
    if len(data) < 40:
        raise DnsParseError("short-ip", f"{len(data)} bytes of IPv6 header")
    payload_len = int.from_bytes(data[4:6], "big")
    src = str(ipaddress.IPv6Address(data[8:24]))
    dst = str(ipaddress.IPv6Address(data[24:40]))
    missing = max(0, 40 + payload_len - len(data))
    payload = data[40 : 40 + payload_len]
    next_header, more = data[6], False
    for _ in range(MAX_EXTENSION_HEADERS):
        if next_header not in IPV6_SKIPPED and next_header != IPV6_FRAGMENT:
            return _parse_transport(next_header, src, dst, payload, missing, more)
        next_header, payload, more = _skip_extension(next_header, payload, more)
    raise DnsParseError("ipv6-extensions", f"more than {MAX_EXTENSION_HEADERS} headers")


def _skip_extension(kind: int, payload: bytes, more: bool) -> tuple[int, bytes, bool]:
    """Skip one IPv6 extension header; returns (next header, rest, more fragments).

    ``more``: an earlier fragment header said more fragments follow.
    """
    if len(payload) < 8:
        raise DnsParseError("short-ip", "IPv6 extension header cut off")
    if kind == IPV6_FRAGMENT:
        fragment = int.from_bytes(payload[2:4], "big")
        if fragment & 0xFFF8:
            raise DnsParseError("ip-fragment", "not the first fragment")
        more = more or bool(fragment & 1)
        size = 8
    elif kind == IPV6_AH:
        size = (payload[1] + 2) * 4  # AH counts 4-byte words (RFC 4302)
    else:
        size = (payload[1] + 1) * 8
    if len(payload) < size:
        raise DnsParseError("short-ip", "IPv6 extension header cut off")
    return payload[0], payload[size:], more


def _parse_transport(
    proto: int, src: str, dst: str, payload: bytes, missing: int, more: bool
) -> _Segment:
    """``more``: the packet is the first fragment of a longer datagram."""
    if proto == UDP:
        return _parse_udp(src, dst, payload, missing, more)
    if proto == TCP:
        return _parse_tcp(src, dst, payload, missing)
    raise DnsParseError("bad-transport", f"IP protocol {proto}")


def _parse_udp(src: str, dst: str, payload: bytes, missing: int, more: bool) -> _Segment:
    if len(payload) < 8:
        raise DnsParseError("short-udp", f"{len(payload)} bytes")
    sport, dport, length = struct.unpack_from("!HHH", payload)
    if more:  # the rest of the datagram is in later fragments: cut, as by a short capture
        missing = max(missing, length - len(payload))
    if length < 8 or (length > len(payload) and not missing):
        raise DnsParseError("bad-udp-length", str(length))
    return _Segment(src, sport, dst, dport, UDP, payload[8:length], missing)


def _parse_tcp(src: str, dst: str, payload: bytes, missing: int) -> _Segment:
    if len(payload) < 20:
        raise DnsParseError("short-tcp", f"{len(payload)} bytes")
    sport, dport, seq = struct.unpack_from("!HHI", payload)
    header_len = (payload[12] >> 4) * 4
    if header_len < 20 or header_len > len(payload):
        raise DnsParseError("bad-tcp-offset", str(header_len))
    return _Segment(src, sport, dst, dport, TCP, payload[header_len:], missing, seq)


def _tcp_packets(segment: _Segment, streams: TcpStreams | None) -> Iterator[DnsPacket]:
    """Every DNS message that starts in a TCP segment: a client may pipeline several
    queries in one segment, and a server their responses (RFC 7766 §6.2.1.1).

    Without ``streams`` the segment is read from its start. A message whose header or
    question continues in the next segment cannot be reported (no reassembly), but
    neither is it malformed: the first one is skipped like a continuation. A later one is
    dropped quietly even where the capture cut it: where it starts is up to the sender,
    not the capture length, which promises the first message's header and question only.
    Each message moves on by at least its 2-byte prefix, so the loop is bounded.
    """
    if not segment.payload and not segment.missing:
        return  # handshake or bare ACK
    start = (segment, 0) if streams is None else streams.message_start(segment)
    if start is None:
        return
    segment, offset = start
    payload, first = segment.payload, True
    if len(payload) < offset + 2:  # only without streams: they skip such a segment
        raise DnsParseError("short-tcp-dns", "length prefix cut off")
    while offset + 2 <= len(payload):
        length = int.from_bytes(payload[offset : offset + 2], "big")
        body = payload[offset + 2 : offset + 2 + length]
        # Shorter than its prefix: the capture was cut, or the message continues in
        # later segments we do not reassemble. Either way keep what the bytes hold.
        cut = segment.cut or len(body) < length
        try:
            message = parse_message(body, cut)
        except DnsParseError as error:
            if not cut or not error.reason.startswith("short") or (first and segment.cut):
                raise
            if first and streams is not None:
                streams.counts.tcp_skipped += 1
            return
        yield _packet(segment, message)
        offset, first = offset + 2 + length, False


# ---------------------------------------------------------------- TCP streams

SEQ_MOD = 1 << 32
# How far (either way) a segment may lie from the previous one of its stream and still
# belong to the same connection: two DNS messages with their prefixes. Further away, a
# new connection reuses the 4-tuple (its initial sequence number is random; one in
# 16384 lands this close by chance, and its segments are skipped until it moves on).
SAME_CONNECTION = 1 << 17

StreamKey = tuple[str, int, str, int]  # src, sport, dst, dport: one direction


@dataclass(slots=True)
class _Stream:
    next: int | None  # sequence number where the next message starts; None: track lost
    end: int  # sequence number just after the last segment seen
    prefix: bytes = b""  # a length prefix that ended the last segment, its message after it


@dataclass(slots=True)
class TcpStreams:
    """Where DNS messages start in each direction of each TCP connection.

    The kernel copies no segment without payload (no SYN), so the first payload segment
    seen in a direction is taken to start a message: true when the connection is seen
    from its start, since each side's first bytes are a length prefix. From there each
    length prefix says where the next message starts, and a segment is parsed from there
    only if it holds that point: continuations of a longer message and retransmits are
    skipped (counted as ``tcp_skipped``), never parsed mid-record. Track is lost when a
    prefix lies beyond the captured bytes or the segment holding a message start was not
    captured; the direction's segments are then skipped until a far sequence number
    shows a new connection on the same 4-tuple. At most ``max_streams`` directions are
    remembered, the least recently seen forgotten first (its next segment is then taken
    to start a message, like a first one).

    A sender that writes the length prefix with its own send() on a TCP_NODELAY socket
    puts it in a segment alone, or at the end of a segment of pipelined messages, and
    the message in the next segment. A prefix that ends its segment exactly
    is kept, and the segment that starts just after it (its sequence number says so,
    unambiguously) is read with the prefix put back in front. A prefix split across two
    segments, or a header and question that continue in a later segment, are not
    reassembled.
    """

    counts: ExchangeCounts
    max_streams: int = 10000
    _streams: OrderedDict[StreamKey, _Stream] = field(default_factory=OrderedDict)

    def message_start(self, segment: _Segment) -> tuple[_Segment, int] | None:
        """The segment to read (with a kept prefix put back in front) and the offset in
        its payload where a message starts; None when none starts there (counted,
        unless the segment ends in a prefix kept for the next one)."""
        key = (segment.src, segment.sport, segment.dst, segment.dport)
        stream = self._streams.pop(key, None)
        first: int | None = segment.seq
        if stream is not None and stream.prefix and segment.seq == stream.end:
            first = segment.seq = (segment.seq - len(stream.prefix)) % SEQ_MOD
            segment.payload = stream.prefix + segment.payload
        elif stream is not None and _near(segment.seq, stream.end):
            first = stream.next
        end = (segment.seq + len(segment.payload) + segment.missing) % SEQ_MOD
        after, prefix = _follow(segment, first)
        self._streams[key] = _Stream(after, end, prefix)
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)
        offset = None if first is None else (first - segment.seq) % SEQ_MOD
        if offset is None or offset + 2 > len(segment.payload):
            self.counts.tcp_skipped += 1
            return None
        if offset + 2 == len(segment.payload) and self._streams[key].prefix:
            return None  # a bare prefix: its message is read from the next segment
        return segment, offset


def _near(seq: int, end: int) -> bool:
    distance = (seq - end) % SEQ_MOD
    return distance <= SAME_CONNECTION or distance >= SEQ_MOD - SAME_CONNECTION


def _follow(segment: _Segment, start: int | None) -> tuple[int | None, bytes]:
    """Where the first message after this segment starts, following length prefixes,
    and the prefix that ends the segment exactly when its message starts right after.

    ``start`` is where a message starts (in this segment or later). Each step moves on
    by at least 2 bytes, so the loop is bounded by the segment's length.
    """
    if start is None:
        return None, b""
    size = len(segment.payload) + segment.missing
    length, after = 0, 0  # the last prefix read: its value, and where it ends
    while (offset := (start - segment.seq) % SEQ_MOD) < size:
        if offset + 2 > len(segment.payload):
            return None, b""  # the prefix was not captured, or continues in the next segment
        length, after = int.from_bytes(segment.payload[offset : offset + 2], "big"), offset + 2
        start = (start + 2 + length) % SEQ_MOD
    kept = length > 0 and after == size == len(segment.payload)
    return start, segment.payload[-2:] if kept else b""


# ---------------------------------------------------------------- DNS message


def parse_message(msg: bytes, cut: bool = False) -> DnsMessage:
    """Parse a DNS message (RFC 1035). ``cut``: the capture ended before the message did.

    A message with TC set is read as cut too: the server says it dropped what did not
    fit, and some servers leave the section counts as they were.
    """
    msg = bytes(msg)  # slices of a bytearray/memoryview would not make addresses
    if len(msg) < _HEADER.size:
        raise DnsParseError("short-dns", f"{len(msg)} bytes of header")
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(msg)
    tc = bool(flags & FLAG_TC)
    cut = cut or tc
    if flags >> 11 & 0xF not in (0, 1, 2, 4, 5, 6):  # QUERY, IQUERY, STATUS, NOTIFY, UPDATE, DSO
        raise DnsParseError("bad-opcode", str(flags >> 11 & 0xF))
    offset = _HEADER.size
    qname, qtype = "", ""
    known: Known = {}
    for i in range(qdcount):
        name, offset = read_name(msg, offset, known)
        if offset + 4 > len(msg):
            raise DnsParseError("short-dns", "question cut off")
        if i == 0:
            qname, qtype = name, qtype_name(int.from_bytes(msg[offset : offset + 2], "big"))
        offset += 4
    answers, after = _read_answers(msg, offset, ancount, cut, known)
    rcode = flags & 0xF
    # The sections after the answers are read only for the OPT record: if they are
    # malformed, the answers stand and so does the header's code.
    if after is not None:
        with contextlib.suppress(DnsParseError):
            rcode |= _extended_rcode(msg, after, nscount, arcount, cut, known) << 4
    truncated = tc or after is None
    return DnsMessage(
        ident, bool(flags & 0x8000), rcode_name(rcode), qname, qtype, answers, truncated
    )


def _read_answers(
    msg: bytes, offset: int, count: int, cut: bool, known: Known
) -> tuple[tuple[DnsAnswer, ...], int | None]:
    """Answers of the types flowscope keeps, and the offset after them (None where a cut
    message ended first: it stops there quietly)."""
    answers: list[DnsAnswer] = []
    for _ in range(count):
        record = _read_cut(msg, offset, cut, known, _read_record)
        if record is None:
            return tuple(answers), None
        answer, offset = record
        if answer is not None:
            answers.append(answer)
    return tuple(answers), offset


def _extended_rcode(
    msg: bytes, offset: int, nscount: int, arcount: int, cut: bool, known: Known
) -> int:
    """The upper 8 bits of the response code, from the EDNS OPT record in the additional
    section (RFC 6891 §6.1.3: BADVERS, BADCOOKIE); 0 without one, or where a cut
    message ends before it. The authority records before it are read to be skipped."""
    for _ in range(nscount):
        record = _read_cut(msg, offset, cut, known, _record)
        if record is None:
            return 0
        offset = record[-1]
    for _ in range(arcount):
        record = _read_cut(msg, offset, cut, known, _record)
        if record is None:
            return 0
        _, rtype, _, ttl, _, offset = record
        if rtype == TYPE_OPT:
            return ttl >> 24
    return 0


def _read_cut(
    msg: bytes, offset: int, cut: bool, known: Known, read: Callable[[bytes, int, Known], T]
) -> T | None:
    """``read(msg, offset, known)``, or None where a cut message ends before the record
    does."""
    if offset >= len(msg) and cut:
        return None
    try:
        return read(msg, offset, known)
    except DnsParseError as error:
        if cut and error.reason.startswith("short"):
            return None
        raise


def _record(msg: bytes, offset: int, known: Known) -> tuple[str, int, int, int, int, int]:
    """One resource record: owner, type, class, TTL as sent, start and end of its data."""
    name, offset = read_name(msg, offset, known)
    if offset + _RR_FIXED.size > len(msg):
        raise DnsParseError("short-dns", "record header cut off")
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(msg, offset)
    start = offset + _RR_FIXED.size
    end = start + rdlength
    if end > len(msg):
        raise DnsParseError("short-dns", "record data cut off")
    return name, rtype, rclass, ttl, start, end


def _read_record(msg: bytes, offset: int, known: Known) -> tuple[DnsAnswer | None, int]:
    name, rtype, rclass, ttl, start, end = _record(msg, offset, known)
    if ttl & 0x80000000:
        ttl = 0  # RFC 2181 §8
    if rclass != CLASS_IN or rtype not in (TYPE_A, TYPE_AAAA, TYPE_CNAME):
        return None, end
    return DnsAnswer(name, qtype_name(rtype), ttl, _rdata(msg, rtype, start, end, known)), end


def _rdata(msg: bytes, rtype: int, start: int, end: int, known: Known) -> str:
    if rtype == TYPE_CNAME:
        target, after = read_name(msg, start, known)
        if after != end:
            raise DnsParseError("bad-rdata", "CNAME length does not match its name")
        return target
    size = 4 if rtype == TYPE_A else 16
    if end - start != size:
        raise DnsParseError("bad-rdata", f"{qtype_name(rtype)} with {end - start} bytes")
    if size == 4:
        return str(ipaddress.IPv4Address(msg[start:end]))
    return str(ipaddress.IPv6Address(msg[start:end]))


# What reading a name from an offset of one message gave: its presentation form ("" for
# the root), the wire bytes of its labels, the offset after it, and the target of the
# pointer that ends the labels from there (None: the root does) with their wire bytes.
_Read = tuple[str, int, int, int | None, int]
Known = dict[int, _Read]  # the names read so far in one message, by where they start


def read_name(msg: bytes, offset: int, known: Known | None = None) -> tuple[str, int]:
    """Read a possibly compressed name at ``offset``; returns (name, offset after it).

    A compression pointer must point strictly before the start of the labels that led
    to it, so every jump lowers the position and a loop cannot exist. ``known`` (filled
    in here) holds what names already read in the same message gave from each label and
    pointer on: a name that reaches one takes the rest from there, as reading on would
    (its first pointer checked against this name's start). Without it a message whose
    names all point to one 127-label name, or to the end of a chain of pointers, costs
    work in the square of its length; with it each byte is read at most once.
    """
    known = {} if known is None else known
    read: list[tuple[int, str, int]] = []  # each label and pointer: offset, text, wire bytes
    wire_len = 0
    floor = offset  # the next pointer must point below this
    while (rest := known.get(offset)) is None:
        if offset >= len(msg):
            raise DnsParseError("short-name", f"name runs past the end at {offset}")
        length = msg[offset]
        if length & 0xC0 == 0xC0:
            target = _pointer_target(msg, offset, floor)
            read.append((offset, "", 0))
            offset = floor = target
            continue
        if length & 0xC0:
            raise DnsParseError("bad-label", f"label type {length & 0xC0:#x}")
        if length == 0:
            rest = known[offset] = ("", 0, offset + 1, None, 0)
            break
        wire_len += length + 1
        if wire_len + 1 > MAX_NAME_WIRE:
            raise DnsParseError("long-name", f"over {MAX_NAME_WIRE} bytes")
        if offset + 1 + length > len(msg):
            raise DnsParseError("short-name", "label cut off")
        read.append((offset, _label_text(msg[offset + 1 : offset + 1 + length]), length + 1))
        offset += 1 + length
    _check_rest(rest, wire_len, floor, offset)
    text, _, end, _, _ = _remember(msg, read, rest, known)
    return text or ".", end


def _check_rest(rest: _Read, wire_len: int, floor: int, offset: int) -> None:
    """Raise what reading on from ``offset`` would have, where a name read before says
    the labels from there end in a pointer that does not go back, or are too long."""
    _, wire, _, target, run_wire = rest
    bad_pointer = target is not None and target >= floor  # reading on would stop there
    if wire_len + (run_wire if bad_pointer else wire) + 1 > MAX_NAME_WIRE:
        raise DnsParseError("long-name", f"over {MAX_NAME_WIRE} bytes")
    if bad_pointer:
        raise DnsParseError("bad-pointer", f"pointer after {offset} to {target} does not go back")


def _remember(msg: bytes, read: list[tuple[int, str, int]], rest: _Read, known: Known) -> _Read:
    """The name from the first of ``read`` on (``rest`` after them); what it gives from
    each of them on is remembered in ``known``."""
    text, wire, end, target, run_wire = rest
    for start, label, size in reversed(read):
        if size:
            text = f"{label}.{text}" if text else label
            wire, run_wire = wire + size, run_wire + size
        else:  # a pointer ends the labels before it, up to the previous pointer
            end, target, run_wire = start + 2, (msg[start] & 0x3F) << 8 | msg[start + 1], 0
        known[start] = (text, wire, end, target, run_wire)
    return text, wire, end, target, run_wire


def _pointer_target(msg: bytes, offset: int, floor: int) -> int:
    if offset + 2 > len(msg):
        raise DnsParseError("short-name", "compression pointer cut off")
    target = (msg[offset] & 0x3F) << 8 | msg[offset + 1]
    if target >= floor:
        raise DnsParseError("bad-pointer", f"pointer at {offset} to {target} does not go back")
    return target


def _label_text(label: bytes) -> str:
    """One label in presentation form, lower-cased, with dots and odd bytes escaped."""
    if _PLAIN_LABEL.fullmatch(label):  # the common case, without a per-byte loop
        return label.lower().decode("ascii")
    out = []
    for byte in label.lower():
        if byte in _PRINTABLE:
            out.append(chr(byte))
        elif byte in (0x2E, 0x5C):  # "." and "\\" inside a label
            out.append("\\" + chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


# ---------------------------------------------------------------- query/response pairing

ExchangeKey = tuple[str, int, str, int, int, int]  # client, cport, server, sport, id, proto
ClientKey = tuple[str, int, int, int]  # client, cport, id, proto: the key without the server


@dataclass(slots=True)
class _Pending:
    time_ns: int
    packet: DnsPacket


@dataclass(slots=True)
class ExchangeCounts:
    """How queries and responses paired, for the collector's metrics (only ever grow)."""

    answered: int = 0  # responses paired with their query exactly
    evicted: int = 0  # queries pushed out of a full pending table
    expired: int = 0  # queries that saw no response within the timeout
    unmatched: int = 0  # responses without a remembered query
    retransmits: int = 0  # queries already pending under the same key
    translated: int = 0  # responses paired although they came from another server (DNAT)
    tcp_skipped: int = 0  # TCP segments where no message starts (continuations, retransmits)


@dataclass(slots=True)
class DnsExchanges:
    """Pairs DNS queries with their responses into :class:`RawDns` events.

    A query is remembered under (client address, client port, server address, server
    port, id, transport). Its response yields one event with ``latency_ns`` and the
    query's time; a response with no remembered query yields an event with latency 0 and
    the response's time. A retransmitted query keeps the first one's time (the latency the
    client saw). The pending table holds at most ``max_pending`` queries; the oldest is
    evicted (and counted) to make room. :meth:`expire` emits queries older than
    ``timeout_ns`` as events with ``rcode=""`` and no answers: the question was asked,
    no answer was seen.

    Destination NAT: a pod asks the cluster DNS Service's address (kube-proxy DNATs it
    after TC ingress), and the answer leaves the DNS pod with the pod's own address
    (un-NATed after TC ingress too), so the response's server is not the query's. A
    response that matches no query exactly is paired with the oldest pending query from
    the same client address and port with the same id and transport; the event reports
    the server the client asked (the query's destination), as it does for an unanswered
    query, and is counted as ``translated``.

    TCP: only segments where a message starts are parsed (:class:`TcpStreams`, as many
    directions remembered as queries pending), and every message that starts in them.
    """

    observer: str
    max_pending: int = 10000
    timeout_ns: int = 5_000_000_000
    counts: ExchangeCounts = field(default_factory=ExchangeCounts)
    _pending: OrderedDict[ExchangeKey, _Pending] = field(default_factory=OrderedDict)
    _by_client: dict[ClientKey, list[ExchangeKey]] = field(default_factory=dict)
    _streams: TcpStreams = field(init=False)

    def __post_init__(self) -> None:
        self._streams = TcpStreams(self.counts, self.max_pending)

    def observe(self, data: bytes, ts_unix_ns: int, out: list[RawDns]) -> None:
        """Take one captured packet; appends to ``out`` the events its messages complete
        (a TCP segment may carry several).

        Raises :class:`DnsParseError` for a malformed packet (the caller counts it); the
        events of messages before a malformed one in the same segment are in ``out``.
        """
        segment = _parse_ip(bytes(data))
        if segment.proto == TCP:
            for packet in _tcp_packets(segment, self._streams):
                self._take(packet, ts_unix_ns, out)
        else:  # one message, read without a generator: the common path stays as lean
            message = parse_message(segment.payload, segment.cut)
            self._take(_packet(segment, message), ts_unix_ns, out)

    def _take(self, packet: DnsPacket, ts_unix_ns: int, out: list[RawDns]) -> None:
        if packet.message.is_response:
            out.append(self._answer(packet, ts_unix_ns))
        else:
            self._remember(packet, ts_unix_ns)

    def _answer(self, packet: DnsPacket, ts_unix_ns: int) -> RawDns:
        """The event for a response: paired with its query when one is pending."""
        key = (packet.dst, packet.dport, packet.src, packet.sport, packet.message.id, packet.proto)
        query = self._pending.pop(key, None)
        if query is None:
            query = self._pop_translated(packet)
            if query is None:
                self.counts.unmatched += 1
                return _event(self.observer, packet, ts_unix_ns, 0, response=True)
            self.counts.translated += 1
            packet = replace(packet, src=query.packet.dst, sport=query.packet.dport)
        else:
            self._forget(key)
            self.counts.answered += 1
        latency = max(0, ts_unix_ns - query.time_ns)
        packet = _with_question(packet, query.packet)
        return _event(self.observer, packet, query.time_ns, latency, response=True)

    def expire(self, now_ns: int) -> list[RawDns]:
        """Queries pending longer than the timeout, as unanswered events (oldest first).

        The table is in arrival order; events from different CPUs can arrive slightly out
        of time order, so a query behind a younger one waits for that one's turn.
        """
        out = []
        while self._pending:
            key, query = next(iter(self._pending.items()))
            if now_ns - query.time_ns < self.timeout_ns:
                break
            del self._pending[key]
            self._forget(key)
            self.counts.expired += 1
            out.append(_event(self.observer, query.packet, query.time_ns, 0, response=False))
        return out

    def expire_all(self) -> list[RawDns]:
        """Every pending query as an unanswered event (at shutdown: none can be answered)."""
        newest = max((query.time_ns for query in self._pending.values()), default=0)
        return self.expire(newest + self.timeout_ns)

    def pending(self) -> int:
        """How many queries wait for a response."""
        return len(self._pending)

    def _remember(self, packet: DnsPacket, ts_unix_ns: int) -> None:
        key = (packet.src, packet.sport, packet.dst, packet.dport, packet.message.id, packet.proto)
        if key in self._pending:
            self.counts.retransmits += 1
            return
        while len(self._pending) >= self.max_pending:
            evicted, _ = self._pending.popitem(last=False)
            self._forget(evicted)
            self.counts.evicted += 1
        self._pending[key] = _Pending(ts_unix_ns, packet)
        self._by_client.setdefault((key[0], key[1], key[4], key[5]), []).append(key)

    def _pop_translated(self, response: DnsPacket) -> _Pending | None:
        """The oldest pending query this response answers from another server, if any."""
        client = (response.dst, response.dport, response.message.id, response.proto)
        keys = self._by_client.get(client)
        if not keys:
            return None
        key = keys[0]
        self._forget(key)
        return self._pending.pop(key)

    def _forget(self, key: ExchangeKey) -> None:
        """Drop a query that left the pending table from the per-client index."""
        client = (key[0], key[1], key[4], key[5])
        keys = self._by_client[client]
        keys.remove(key)
        if not keys:
            del self._by_client[client]


def _with_question(response: DnsPacket, query: DnsPacket) -> DnsPacket:
    """The response, with its query's question when it has none: FORMERR, REFUSED, …
    responses may leave the question section out, and the exchange asked one."""
    if response.message.qname:  # "" only without a question ("." is the root)
        return response
    asked = query.message
    message = replace(response.message, qname=asked.qname, qtype=asked.qtype)
    return replace(response, message=message)


def _event(observer: str, packet: DnsPacket, time_ns: int, latency: int, response: bool) -> RawDns:
    """One exchange as a raw event; ``response`` says whether ``packet`` is the answer."""
    msg = packet.message
    client, cport, server, sport = (
        (packet.dst, packet.dport, packet.src, packet.sport)
        if response
        else (packet.src, packet.sport, packet.dst, packet.dport)
    )
    return RawDns(
        observer=observer,
        time_ns=time_ns,
        id=msg.id,
        qname=msg.qname,
        qtype=msg.qtype,
        rcode=msg.rcode if response else "",
        client=client,
        client_port=cport,
        server=server,
        server_port=sport,
        proto=packet.proto,
        latency_ns=latency,
        answers=[a.to_wire() for a in msg.answers] if response else [],
    )
