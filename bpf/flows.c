/* flows.c — TC clsact classifiers (ingress and egress) that aggregate flows in a per-CPU
 * cache backed by a map, and copy DNS packets to a ring buffer.
 *
 * Reads only the stable __sk_buff context and packet bytes (direct packet access, or
 * bpf_skb_load_bytes for bytes outside the linear area); never a struct sock field.
 * Every program returns TC_ACT_UNSPEC: "no verdict, continue with the next filter", so
 * the packet's fate is whatever it would have been without flowscope — also when another
 * product's filters sit behind ours on the same hook (TC_ACT_OK would end the
 * classification and skip them).
 *
 * No double counting on a node (docs/collector.md): every packet is counted at TC
 * ingress; at TC egress only packets that originate on this host (skb->ingress_ifindex
 * == 0). A forwarded packet (pod→pod, pod→uplink, uplink→pod) is thereby counted once,
 * where it entered. Bridge master devices are not attached by default (user space),
 * since a frame reaching the host through a bridge port crosses the port and the bridge.
 *
 * Constants (-D): MAX_FLOWS, FLOW_CACHE_SLOTS, DNS_PORT, DNS_CAPTURE_LEN, DNS_RINGBUF_PAGES,
 * TUNNEL_PORT_0 .. TUNNEL_PORT_3 (UDP ports of VXLAN or Geneve tunnels; 0: none).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>

#include "flowscope_abi.h"

#define ETH_HLEN_ 14
#define VLAN_HLEN_ 4
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT 6

#define IPPROTO_HOPOPTS_ 0
#define IPPROTO_ROUTING_ 43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_AH_ 51
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_DSTOPTS_ 60
#define IPPROTO_SCTP_ 132
#define IPPROTO_UDPLITE_ 136

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_ACK 0x10

/* Two flow maps, and the outer array `flows` that says which one the programs count
 * into: flows[0], the active map; flows[1] and flows[2], the two maps, for user space to
 * find (set once). A drain puts the other map into flows[0], then empties the map it
 * took out (services/collector/draining.py, BatchReader). Updating a map-in-map from
 * user space returns only after an RCU grace period (kernel/bpf/syscall.c,
 * maybe_wait_bpf_programs), when no program run that looked up the old map is still
 * running, so nothing adds to an entry the drain has copied and deleted (a batched
 * lookup-and-delete of the active map lost such adds: the entry's memory went back to
 * the map's free list, or to another flow). */
BPF_TABLE("hash", struct flow_key, struct flow_value, flows_a, MAX_FLOWS);
BPF_TABLE("hash", struct flow_key, struct flow_value, flows_b, MAX_FLOWS);
BPF_ARRAY_OF_MAPS(flows, "flows_a", 3);
BPF_PERCPU_ARRAY(counters, struct collector_counters, 1);
BPF_ARRAY(clock_pair, struct clock_pair, 1);
#if FLOW_CACHE_SLOTS > 0
#if FLOW_CACHE_SLOTS & (FLOW_CACHE_SLOTS - 1)
#error "FLOW_CACHE_SLOTS must be a power of two"
#endif
/* The flow cache (see account_cached): two halves of FLOW_CACHE_SLOTS slots per CPU. */
BPF_PERCPU_ARRAY(flow_cache, struct flow_cache_slot, 2 * FLOW_CACHE_SLOTS);
/* The cache's generation, written by user space only: memory-mapped (BPF_F_MMAPABLE) so
 * that user space stores it with one aligned 8-byte store; the map-update syscall
 * copies values with memcpy, which may store byte by byte (x86 `rep movsb`), and a
 * program reading a torn generation would count into slots nobody reads. */
BPF_F_TABLE("array", int, __u64, flow_cache_generation, 1, BPF_F_MMAPABLE);
#endif
BPF_RINGBUF_OUTPUT(dns_events, DNS_RINGBUF_PAGES);
/* Never written: it only exposes struct dns_event's compiled layout to user space, which
 * checks it against abi.py at start-up (bcc derives table types, not ring buffer ones). */
BPF_ARRAY(dns_event_layout, struct dns_event, 1);

/* Header bytes at `off`, LEN a compile-time constant. Direct packet access when the
 * bytes are in the skb's linear area (the common case: no helper call), else
 * bpf_skb_load_bytes, which also reads paged data. MAX_DIRECT_OFF bounds the offset
 * so the verifier can check the packet pointer arithmetic. */
#define MAX_DIRECT_OFF 256
#define LOAD(skb, off, to, LEN) load_header(skb, off, to, LEN)

static __always_inline int load_header(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    if (off <= MAX_DIRECT_OFF) {
        void *from = data + off;
        if (from + len <= data_end) {
            __builtin_memcpy(to, from, len);
            return 0;
        }
    }
    return bpf_skb_load_bytes(skb, off, to, len);
}

/* What one packet contributes, parsed from its headers. */
struct packet {
    __u8  saddr[16];
    __u8  daddr[16];
    __u16 sport;
    __u16 dport;
    __u8  proto;
    __u8  family;
    __u8  tcp_flags;
    __u8  has_ports;
    __u32 l3_off;           /* offset of the IP header in the packet */
    __u32 l4_off;           /* offset of the L4 header (valid when has_ports) */
    __u32 ip_len;           /* IP-level bytes of this skb */
    __u32 hdr_len;          /* IP + L4 header bytes (replicated per GSO segment) */
    __u32 payload_len;      /* L4 payload bytes (TCP: after the TCP header) */
};

/* ICMP request/reply counterparts, as Community ID: both directions get the same ports. */
static __always_inline int icmp4_counterpart(__u8 type)
{
    switch (type) {
    case 8: return 0;  case 0: return 8;
    case 13: return 14; case 14: return 13;
    case 15: return 16; case 16: return 15;
    case 10: return 9;  case 9: return 10;
    case 17: return 18; case 18: return 17;
    }
    return -1;
}

static __always_inline int icmp6_counterpart(__u8 type)
{
    switch (type) {
    case 128: return 129; case 129: return 128;
    case 130: return 131; case 131: return 130;
    case 133: return 134; case 134: return 133;
    case 135: return 136; case 136: return 135;
    case 139: return 140; case 140: return 139;
    case 144: return 145; case 145: return 144;
    }
    return -1;
}

/* Ethernet + up to two 802.1Q/802.1ad tags → offset of the L3 header and its EtherType.
 * A tag the NIC stripped (skb->vlan_present) is not in the data, so it needs no skip. */
static __always_inline int parse_l2(struct __sk_buff *skb, __u32 *off, __u16 *proto)
{
    __be16 type;
    if (LOAD(skb, 12, &type, sizeof(type)) < 0)
        return -1;
    *off = ETH_HLEN_;
#pragma unroll
    for (int i = 0; i < MAX_VLAN_TAGS; i++) {
        if (type != bpf_htons(ETH_P_8021Q) && type != bpf_htons(ETH_P_8021AD))
            break;
        if (LOAD(skb, *off + 2, &type, sizeof(type)) < 0)
            return -1;
        *off += VLAN_HLEN_;
    }
    *proto = bpf_ntohs(type);
    return 0;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct packet *p)
{
    __u8 hdr[20];
    if (LOAD(skb, p->l3_off, hdr, sizeof(hdr)) < 0)
        return -1;
    if (hdr[0] >> 4 != 4)
        return -1;                      /* EtherType IPv4, but not an IPv4 header */
    __u32 ihl = (hdr[0] & 0x0f) * 4;   /* options included: IHL counts 32-bit words */
    if (ihl < 20)
        return -1;
    __u32 tot_len = ((__u32)hdr[2] << 8) | hdr[3];
    __u16 frag = (((__u16)hdr[6] << 8) | hdr[7]) & 0x1fff;
    p->family = FLOWSCOPE_AF_INET;
    p->proto = hdr[9];
    __builtin_memcpy(p->saddr, &hdr[12], 4);
    __builtin_memcpy(p->daddr, &hdr[16], 4);
    /* Ethernet pads short frames: trust tot_len when it is plausible. A TSO super-packet
     * may carry 0 (BIG TCP); then the skb length is the truth. */
    __u32 avail = skb->len - p->l3_off;
    p->ip_len = (tot_len >= ihl && tot_len <= avail) ? tot_len : avail;
    p->l4_off = p->l3_off + ihl;
    p->hdr_len = ihl;
    p->has_ports = frag == 0;           /* a non-first fragment carries no L4 header */
    return 0;
}

/* IPv6 with the common extension headers skipped (hop-by-hop, routing, destination
 * options, fragment, AH) up to a non-first fragment's payload; a bounded loop keeps the
 * verifier happy. */
static __always_inline int parse_ipv6(struct __sk_buff *skb, struct packet *p)
{
    __u8 hdr[40];
    if (LOAD(skb, p->l3_off, hdr, sizeof(hdr)) < 0)
        return -1;
    if (hdr[0] >> 4 != 6)
        return -1;                      /* EtherType IPv6, but not an IPv6 header */
    __u32 payload = ((__u32)hdr[4] << 8) | hdr[5];
    __u8 next = hdr[6];
    __u32 off = p->l3_off + 40;
    p->family = FLOWSCOPE_AF_INET6;
    __builtin_memcpy(p->saddr, &hdr[8], 16);
    __builtin_memcpy(p->daddr, &hdr[24], 16);
    p->has_ports = 1;
#pragma unroll
    for (int i = 0; i < MAX_IPV6_EXT; i++) {
        __u8 ext[4];
        if (next != IPPROTO_HOPOPTS_ && next != IPPROTO_ROUTING_ && next != IPPROTO_DSTOPTS_ &&
            next != IPPROTO_FRAGMENT_ && next != IPPROTO_AH_)
            break;
        if (LOAD(skb, off, ext, sizeof(ext)) < 0)
            return -1;
        if (next == IPPROTO_FRAGMENT_) {
            __u16 frag_off = (((__u16)ext[2] << 8) | ext[3]) & 0xfff8;
            if (frag_off != 0)
                p->has_ports = 0;
            off += 8;
        } else if (next == IPPROTO_AH_) {
            off += ((__u32)ext[1] + 2) * 4;
        } else {
            off += ((__u32)ext[1] + 1) * 8;
        }
        next = ext[0];
        /* A non-first fragment: what follows is payload, not headers. Its protocol is the
         * fragment header's next header, as IPv4's is the header's protocol field. */
        if (!p->has_ports)
            break;
    }
    p->proto = next;
    __u32 avail = skb->len - p->l3_off;
    __u32 tot = payload + 40;
    p->ip_len = (payload != 0 && tot <= avail) ? tot : avail;
    p->l4_off = off;
    p->hdr_len = off - p->l3_off;
    return 0;
}

/* Ports (or ICMP type/counterpart), TCP flags and header length of the L4 header. */
static __always_inline void parse_l4(struct __sk_buff *skb, struct packet *p)
{
    __u8 l4[16];
    if (!p->has_ports)
        return;
    switch (p->proto) {
    case IPPROTO_TCP:
        if (LOAD(skb, p->l4_off, l4, 14) < 0)
            break;
        p->sport = ((__u16)l4[0] << 8) | l4[1];
        p->dport = ((__u16)l4[2] << 8) | l4[3];
        p->tcp_flags = l4[13];
        p->hdr_len += (l4[12] >> 4) * 4;
        return;
    case IPPROTO_UDP:
    case IPPROTO_UDPLITE_:      /* UDP's header layout (RFC 3828), a coverage field for length */
    case IPPROTO_SCTP_:
        if (LOAD(skb, p->l4_off, l4, 4) < 0)
            break;
        p->sport = ((__u16)l4[0] << 8) | l4[1];
        p->dport = ((__u16)l4[2] << 8) | l4[3];
        p->hdr_len += p->proto == IPPROTO_SCTP_ ? 12 : 8;
        return;
    case IPPROTO_ICMP:
    case IPPROTO_ICMPV6_: {
        if (LOAD(skb, p->l4_off, l4, 2) < 0)
            break;
        int other = p->proto == IPPROTO_ICMP ? icmp4_counterpart(l4[0])
                                             : icmp6_counterpart(l4[0]);
        p->sport = l4[0];
        p->dport = other >= 0 ? (__u16)other : l4[1];
        p->hdr_len += 8;
        return;
    }
    }
    p->has_ports = 0;   /* unknown protocol or truncated header: addresses only */
}

static __always_inline int tunnel_port(__u16 port)
{
    return port != 0 && (port == TUNNEL_PORT_0 || port == TUNNEL_PORT_1 ||
                         port == TUNNEL_PORT_2 || port == TUNNEL_PORT_3);
}

/* Where the inner headers of a UDP tunnel's super-packet begin (0: not a tunnel header
 * this knows), and their `type`. The stack segments a TCP super-packet sent over a VXLAN
 * or Geneve device only after encapsulating it (SKB_GSO_UDP_TUNNEL), or a NIC does; GRO
 * builds the same on receipt. `__sk_buff` has no gso_type, so the headers after the UDP
 * one tell: Geneve (RFC 8926) has version 0 and a protocol type (Ethernet 0x6558, or
 * IPv4 / IPv6 directly) in bytes 2-3, then 4 x opt_len bytes of options after its 8;
 * VXLAN (RFC 7348) has the I flag (0x08) in byte 0 and reserved zeros in bytes 2-3,
 * then Ethernet. `off`: the tunnel header. */
static __always_inline __u32 udp_tunnel_inner(struct __sk_buff *skb, __u32 off, __u16 *type)
{
    __u8 t[8];
    if (LOAD(skb, off, t, sizeof(t)) < 0)
        return 0;
    *type = ((__u16)t[2] << 8) | t[3];
    if (t[0] >> 6 == 0 && (*type == ETH_P_TEB || *type == ETH_P_IP || *type == ETH_P_IPV6))
        return off + 8 + (t[0] & 0x3f) * 4;     /* Geneve, with its options */
    if ((t[0] & 0x08) && *type == 0) {
        *type = ETH_P_TEB;                      /* VXLAN: Ethernet follows */
        return off + 8;
    }
    return 0;
}

/* The same for an IP tunnel's super-packet (SKB_GSO_IPXIP4/6, SKB_GSO_GRE: the stack's
 * GSO over an ipip, sit, ip6tnl or GRE device, or GRO on receipt, as in Calico's IPIP
 * mode): IPv4 or IPv6 right after the outer IP header (protocol 4 or 41), or GRE (RFC
 * 2784, 2890: version 0, no routing; 4 bytes, 4 more each for checksum, key and sequence
 * number) before IPv4, IPv6 or Ethernet (gretap). `off`: the header after the outer IP. */
static __always_inline __u32 ip_tunnel_inner(struct __sk_buff *skb, __u32 off, __u8 proto,
                                             __u16 *type)
{
    if (proto == IPPROTO_IPIP || proto == IPPROTO_IPV6) {
        *type = proto == IPPROTO_IPIP ? ETH_P_IP : ETH_P_IPV6;
        return off;
    }
    __u8 g[4];
    if (proto != IPPROTO_GRE || LOAD(skb, off, g, sizeof(g)) < 0 || (g[0] & 0x40) || (g[1] & 0x07))
        return 0;
    *type = ((__u16)g[2] << 8) | g[3];
    return off + 4 + ((g[0] >> 7) & 1) * 4 + ((g[0] >> 5) & 1) * 4 + ((g[0] >> 4) & 1) * 4;
}

/* The headers every wire segment of a tunnel's super-packet repeats besides the outer IP
 * and L4 ones: the tunnel's own header from `off` on, then from `inner` the inner
 * Ethernet header (`type` ETH_P_TEB), IPv4 / IPv6 and TCP / UDP header. Anything else
 * adds nothing (counted as before: outer headers only). */
static __always_inline __u32 tunnel_headers(struct __sk_buff *skb, __u32 off, __u32 inner,
                                            __u16 type)
{
    if (inner == 0)
        return 0;
    if (type == ETH_P_TEB) {
        __be16 l3;
        if (LOAD(skb, inner + 12, &l3, sizeof(l3)) < 0)
            return 0;
        type = bpf_ntohs(l3);
        inner += ETH_HLEN_;
    }
    __u8 ip[10];
    if (LOAD(skb, inner, ip, sizeof(ip)) < 0)
        return 0;
    __u32 l4 = inner;
    __u8 proto;
    if (type == ETH_P_IP && ip[0] >> 4 == 4 && (ip[0] & 0x0f) >= 5) {
        l4 += (ip[0] & 0x0f) * 4;
        proto = ip[9];
    } else if (type == ETH_P_IPV6 && ip[0] >> 4 == 6) {
        l4 += 40;                           /* extension headers: neither TCP nor UDP below */
        proto = ip[6];
    } else {
        return 0;
    }
    __u32 l4_len = 0;
    if (proto == IPPROTO_TCP) {
        __u8 doff;
        if (LOAD(skb, l4 + 12, &doff, sizeof(doff)) < 0)
            return 0;
        l4_len = (doff >> 4) * 4;
    } else if (proto == IPPROTO_UDP) {
        l4_len = 8;
    }
    return l4 - off + l4_len;
}

/* -1 / 0 / 1 as (a_addr, a_port) compares with (b_addr, b_port); any total order works. */
static __always_inline int endpoint_cmp(const __u8 *a, __u16 ap, const __u8 *b, __u16 bp)
{
    const __u64 *a64 = (const __u64 *)a, *b64 = (const __u64 *)b;
    if (a64[0] != b64[0])
        return a64[0] < b64[0] ? -1 : 1;
    if (a64[1] != b64[1])
        return a64[1] < b64[1] ? -1 : 1;
    if (ap != bp)
        return ap < bp ? -1 : 1;
    return 0;
}

/* Canonical key; returns the packet's direction relative to it. */
static __always_inline __u8 make_key(const struct packet *p, struct flow_key *k)
{
    __u8 dir = endpoint_cmp(p->saddr, p->sport, p->daddr, p->dport) <= 0
                   ? FLOWSCOPE_DIR_LO_HI : FLOWSCOPE_DIR_HI_LO;
    if (dir == FLOWSCOPE_DIR_LO_HI) {
        __builtin_memcpy(k->addr_lo, p->saddr, 16);
        __builtin_memcpy(k->addr_hi, p->daddr, 16);
        k->port_lo = p->sport;
        k->port_hi = p->dport;
    } else {
        __builtin_memcpy(k->addr_lo, p->daddr, 16);
        __builtin_memcpy(k->addr_hi, p->saddr, 16);
        k->port_lo = p->dport;
        k->port_hi = p->sport;
    }
    k->proto = p->proto;
    k->family = p->family;
    return dir;
}

static __always_inline void add_to(struct flow_value *v, __u8 proto, __u8 tcp_flags, __u8 dir,
                                   __u64 packets, __u64 bytes, __u64 now)
{
    /* Several CPUs update one entry concurrently: counters are atomic adds. */
    __sync_fetch_and_add(&v->packets[dir & 1], packets);
    __sync_fetch_and_add(&v->bytes[dir & 1], bytes);
    if (proto == IPPROTO_TCP && tcp_flags) {
        /* Established flows repeat the same flags (ACK, PSH): skip the locked OR then. */
        if ((v->tcp_flags & tcp_flags) != tcp_flags)
            __sync_fetch_and_or(&v->tcp_flags, (__u64)tcp_flags);
        if ((tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
            v->fwd = dir;   /* the SYN sender is the initiator: that is "forward" */
            v->initiator = 1;
        }
    }
    /* `now` was read before the lookup: another CPU may have created or updated the
     * entry with a later tick since. Written as it is, last_tick went back before
     * first_tick (a record's end_ns before its start_ns). */
    if (now > v->last_tick)
        v->last_tick = now;
}

/* The flow map the programs count into (see `flows`). */
static __always_inline void *active_flows(void)
{
    int zero = 0;
    return flows.lookup(&zero);
}

static __always_inline void count_lost(__u64 packets, __u64 bytes)
{
    int zero = 0;
    struct collector_counters *c = counters.lookup(&zero);
    if (c) {
        c->map_full_packets += packets;   /* per-CPU: no atomics needed */
        c->map_full_bytes += bytes;
    }
}

/* The tick ↔ CLOCK_MONOTONIC pair user space needs, written once, by the first new flow
 * (before its insert, so that every entry user space finds comes with a pair). Ticks
 * and the coarse clock advance in the same timer interrupt; should one fall between the
 * two reads, the pair is off by one tick, within the ticks' own precision. */
static __always_inline void remember_clock(void)
{
    int zero = 0;
    struct clock_pair *c = clock_pair.lookup(&zero);
    if (c && c->jiffies == 0) {
        c->coarse_ns = bpf_ktime_get_coarse_ns();
        c->jiffies = bpf_jiffies64();
    }
}

/* What one packet adds to its flow, whichever path parsed it. */
struct contribution {
    __u32 ip_len;           /* IP-level bytes of this skb */
    __u32 hdr_len;          /* IP + L4 header bytes (replicated per GSO segment) */
    __u8  proto;
    __u8  tcp_flags;
    __u8  dir;              /* FLOWSCOPE_DIR_* of the packet relative to the key */
};

/* The wire packets one skb stands for. A GSO/GRO super-packet stands for gso_segs, each
 * with its own headers (added back by the callers). One built from a virtio-net header
 * (a tap, a virtio-net NIC receiving a guest's TSO, AF_PACKET with PACKET_VNET_HDR:
 * SKB_GSO_DODGY) has gso_segs 0 until it is segmented, only gso_size set, at TC ingress
 * and egress alike: its segments are counted as the kernel's qdisc_pkt_len_init does,
 * the L4 payload in gso_size pieces (TCP and UDP GSO: hdr_len includes the L4 header). */
static __always_inline __u64 wire_segments(struct __sk_buff *skb, const struct contribution *c)
{
    __u32 segs = skb->gso_segs;
    if (segs > 1)
        return segs;
    __u32 size = skb->gso_size;
    if (segs == 0 && size != 0 && c->ip_len > c->hdr_len)
        return (c->ip_len - c->hdr_len + size - 1) / size;
    return 1;
}

static __always_inline void account(struct __sk_buff *skb, struct flow_key *key,
                                    const struct contribution *c)
{
    /* Timer ticks (jiffies, 1/HZ: 1-4 ms), not nanoseconds. A clock read is paid on
     * every packet: bpf_ktime_get_ns cost ~30 ns of a ~80 ns program, the coarse clock
     * ~12 ns, bpf_jiffies64 next to nothing (it reads one variable). Flow start/end
     * need no more than millisecond precision: records cover seconds-long intervals and
     * idle_timeout is seconds. User space converts ticks with struct clock_pair. DNS
     * events keep bpf_ktime_get_ns: their latency is measured in microseconds. */
    __u64 now = bpf_jiffies64();
    __u64 segs = wire_segments(skb, c);
    __u64 bytes = c->ip_len + (segs - 1) * c->hdr_len;
    __u8 dir = c->dir;

    void *map = active_flows();
    if (!map) {
        count_lost(segs, bytes);   /* flows[0] empty: user space has not set it up */
        return;
    }
    struct flow_value *v = bpf_map_lookup_elem(map, key);
    if (v) {
        add_to(v, c->proto, c->tcp_flags, dir, segs, bytes, now);
        return;
    }
    remember_clock();
    struct flow_value fresh = {};
    fresh.first_tick = now;
    fresh.last_tick = now;
    fresh.ifindex = skb->ifindex;
    fresh.fwd = dir;
    fresh.packets[dir & 1] = segs;
    fresh.bytes[dir & 1] = bytes;
    if (c->proto == IPPROTO_TCP) {
        fresh.tcp_flags = c->tcp_flags;
        fresh.initiator = (c->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
    }
    int err = bpf_map_update_elem(map, key, &fresh, BPF_NOEXIST);
    if (err == 0)
        return;
    /* -EEXIST: another CPU created the entry between our lookup and insert. */
    v = bpf_map_lookup_elem(map, key);
    if (v) {
        add_to(v, c->proto, c->tcp_flags, dir, segs, bytes, now);
        return;
    }
    count_lost(segs, bytes);   /* -E2BIG / -ENOMEM: the map is full */
}

#if FLOW_CACHE_SLOTS > 0
/* A flow taken out of the cache joins its map entry (or becomes one) exactly as the
 * packets it counted would have: atomic adds (other CPUs update the same entry), the
 * union of flags, the earliest first and latest last tick, and the SYN sender as forward. */
static __always_inline void merge_into(struct flow_value *v, const struct flow_value *s)
{
    if (s->packets[0]) {
        __sync_fetch_and_add(&v->packets[0], s->packets[0]);
        __sync_fetch_and_add(&v->bytes[0], s->bytes[0]);
    }
    if (s->packets[1]) {
        __sync_fetch_and_add(&v->packets[1], s->packets[1]);
        __sync_fetch_and_add(&v->bytes[1], s->bytes[1]);
    }
    if ((v->tcp_flags & s->tcp_flags) != s->tcp_flags)
        __sync_fetch_and_or(&v->tcp_flags, s->tcp_flags);
    if (s->initiator) {
        v->fwd = s->fwd;
        v->initiator = 1;
    }
    if (v->first_tick > s->first_tick) {
        /* The slot's first packet came first (another CPU's slot was moved here before):
         * its direction and interface are the flow's, as with one map entry. */
        v->first_tick = s->first_tick;
        v->ifindex = s->ifindex;
        if (!v->initiator)
            v->fwd = s->fwd;
    }
    if (v->last_tick < s->last_tick)
        v->last_tick = s->last_tick;
}

/* Move a valid slot's flow into the flow map (the map-full rule of account() applies).
 * Insert first: a flow leaving the cache is most often one the map does not hold (a
 * short flow pushed out by newer ones), and the insert (BPF_NOEXIST) finds an existing
 * entry itself, so the common case costs one hash-table walk, not a lookup and an insert. */
static __always_inline void evict(struct flow_cache_slot *s)
{
    void *map = active_flows();
    if (map && bpf_map_update_elem(map, &s->key, &s->value, BPF_NOEXIST) == 0)
        return;
    struct flow_value *v = map ? bpf_map_lookup_elem(map, &s->key) : 0;   /* -EEXIST */
    if (v) {
        merge_into(v, &s->value);
        return;
    }
    count_lost(s->value.packets[0] + s->value.packets[1], s->value.bytes[0] + s->value.bytes[1]);
}

/* Slot of a key in one half: a few multiply-adds over the key's five words (the map's
 * jhash over 40 bytes, bucket walk and memcmp call were most of a packet's cost). */
static __always_inline __u32 cache_index(const struct flow_key *key)
{
    const __u64 *w = (const __u64 *)key;
    const __u64 m = 0x9e3779b97f4a7c15ULL;
    __u64 h = w[0];
    h = h * m + w[1];
    h = h * m + w[2];
    h = h * m + w[3];
    h = h * m + w[4];
    h *= m;
    return (__u32)(h >> 32) & (FLOW_CACHE_SLOTS - 1);
}

/* account() through the per-CPU flow cache (docs/collector.md, "Flow cache"). The
 * generation g (user space increments it at each drain) picks the half, g & 1; a slot
 * is valid only when its tag is g, so a half reused two generations later needs no
 * clearing. A packet of the cached flow is counted with plain adds: the slot belongs to
 * this CPU, and TC programs on one CPU do not nest (ingress runs in softirq, egress
 * with bottom halves disabled, both with migration disabled; netpoll transmits bypass
 * TC), so nothing else writes it meanwhile. User space reads the previous generation's
 * half only after an RCU grace period (membarrier), when no program that read the old
 * g still runs. Another flow takes the slot over: the old one goes to the map first. */
static __always_inline void account_cached(struct __sk_buff *skb, struct flow_key *key,
                                           const struct contribution *c)
{
    int zero = 0;
    __u64 *gp = flow_cache_generation.lookup(&zero);
    if (!gp) {
        account(skb, key, c);
        return;
    }
    __u64 g = *(volatile __u64 *)gp;
    if (g == 0) {           /* user space does not drain the cache (yet): map only */
        account(skb, key, c);
        return;
    }
    __u32 index = ((__u32)g & 1) * FLOW_CACHE_SLOTS + cache_index(key);
    struct flow_cache_slot *s = flow_cache.lookup(&index);
    if (!s) {
        account(skb, key, c);
        return;
    }
    __u64 now = bpf_jiffies64();
    __u64 segs = wire_segments(skb, c);
    __u64 bytes = c->ip_len + (segs - 1) * c->hdr_len;
    __u8 dir = c->dir & 1;
    const __u64 *a = (const __u64 *)key, *b = (const __u64 *)&s->key;
    if (s->generation == g &&
        ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4])) == 0) {
        struct flow_value *v = &s->value;
        v->packets[dir] += segs;
        v->bytes[dir] += bytes;
        if (c->proto == IPPROTO_TCP) {
            v->tcp_flags |= c->tcp_flags;
            if ((c->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
                v->fwd = dir;
                v->initiator = 1;
            }
        }
        v->last_tick = now;
        return;
    }
    if (s->generation == g)
        evict(s);
    remember_clock();   /* before the slot can be read: every flow comes with a pair */
    /* Paid once per installed flow, not per packet (ticks are 1-4 ms: two CPUs' slots of
     * one request/response flow usually start in the same tick). */
    s->first_ns = bpf_ktime_get_ns();
    s->key = *key;
    struct flow_value *v = &s->value;
    __builtin_memset(v, 0, sizeof(*v));
    v->first_tick = now;
    v->last_tick = now;
    v->ifindex = skb->ifindex;
    v->fwd = dir;
    v->packets[dir] = segs;
    v->bytes[dir] = bytes;
    if (c->proto == IPPROTO_TCP) {
        v->tcp_flags = c->tcp_flags;
        v->initiator = (c->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
    }
    s->generation = g;
}
#else
#define account_cached account
#endif

static __always_inline int is_dns(const struct packet *p)
{
    return p->has_ports && (p->proto == IPPROTO_UDP || p->proto == IPPROTO_TCP) &&
           (p->sport == DNS_PORT || p->dport == DNS_PORT);
}

/* Copy the packet from its IP header on, bounded, to the ring buffer. */
static __always_inline void capture_dns(struct __sk_buff *skb, const struct packet *p, __u8 direction)
{
    int zero = 0;
    struct collector_counters *c = counters.lookup(&zero);
    /* TCP segments without payload (handshake, bare ACKs) carry no DNS message. */
    if (p->proto == IPPROTO_TCP && p->ip_len <= p->hdr_len)
        return;
    struct dns_event *e = dns_events.ringbuf_reserve(sizeof(struct dns_event));
    if (!e) {
        if (c)
            c->dns_ringbuf_full++;
        return;
    }
    __u64 len = skb->len - p->l3_off;
    if (len > p->ip_len)
        len = p->ip_len;
    if (len > DNS_CAPTURE_LEN)
        len = DNS_CAPTURE_LEN;
    /* The verifier needs the copy length's bounds on the very register passed to the
     * helper; clang otherwise checks one copy and passes another. The empty asm makes
     * the value opaque so the checks below apply to the register actually used. */
    asm volatile("" : "+r"(len));
    if (len < 1 || len > DNS_CAPTURE_LEN ||
        bpf_skb_load_bytes(skb, p->l3_off, e->data, len) < 0) {
        dns_events.ringbuf_discard(e, 0);
        return;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->ifindex = skb->ifindex;
    e->pkt_len = p->ip_len;
    e->cap_len = len;
    e->direction = direction;
    dns_events.ringbuf_submit(e, 0);
    if (c)
        c->dns_captured++;
}

/* One packet, any shape, through the general parser. `ethernet`: the device has an
 * Ethernet header (veth, physical NICs, bridges); otherwise (tun, WireGuard, IP-in-IP)
 * the data starts at the IP header and skb->protocol names it. */
static __always_inline int handle_general(struct __sk_buff *skb, __u8 direction, const int ethernet)
{
    struct packet p = {};
    __u16 l3;
    if (ethernet) {
        if (parse_l2(skb, &p.l3_off, &l3) < 0)
            return TC_ACT_UNSPEC;
    } else {
        p.l3_off = 0;
        l3 = bpf_ntohs(skb->protocol);
    }
    if (l3 == ETH_P_IP) {
        if (parse_ipv4(skb, &p) < 0)
            return TC_ACT_UNSPEC;
    } else if (l3 == ETH_P_IPV6) {
        if (parse_ipv6(skb, &p) < 0)
            return TC_ACT_UNSPEC;
    } else {
        return TC_ACT_UNSPEC;   /* ARP, LLDP, …: not IP, not a flow */
    }
    parse_l4(skb, &p);
    /* a tunnel's super-packet: each wire segment repeats the inner headers too */
    if (skb->gso_size != 0) {
        __u32 off = p.l4_off, inner = 0;
        __u16 type = 0;
        if (p.proto == IPPROTO_UDP && p.has_ports && tunnel_port(p.dport)) {
            off += 8;
            inner = udp_tunnel_inner(skb, off, &type);
        } else if (!p.has_ports) {
            inner = ip_tunnel_inner(skb, off, p.proto, &type);
        }
        p.hdr_len += tunnel_headers(skb, off, inner, type);
    }
    struct flow_key key = {};
    struct contribution c = {
        .ip_len = p.ip_len, .hdr_len = p.hdr_len, .proto = p.proto,
        .tcp_flags = p.tcp_flags, .dir = make_key(&p, &key),
    };
    /* Through the cache too: a flow whose packets take both paths on one CPU (a VLAN tag
     * or IP options on some of them) then has one slot, and its first packet's direction. */
    account_cached(skb, &key, &c);
    if (is_dns(&p))
        capture_dns(skb, &p, direction);
    return TC_ACT_UNSPEC;
}

/* handle_common's second half: L4 header, key and accounting. `ip_total`: the IP
 * header's own length figure (IPv6: payload + 40), trusted when at least `ip_min` and
 * at most `avail` (the skb's bytes from the IP header on), as parse_ipv4/parse_ipv6 do. */
static __always_inline int count_common(struct __sk_buff *skb, __u8 *ip, __u8 *l4, __u8 proto,
                                        __u8 family, __u32 ip_total, __u32 ip_min,
                                        __u32 ip_hdr, __u32 avail)
{
    struct contribution c = {.proto = proto, .hdr_len = ip_hdr};
    if (proto == IPPROTO_TCP) {
        c.tcp_flags = l4[13];
        c.hdr_len += (l4[12] >> 4) * 4;
    } else if (proto == IPPROTO_UDP) {
        c.hdr_len += 8;
    } else {
        return 0;
    }
    /* Ethernet pads short frames; a TSO super-packet may carry 0 (see parse_ipv4). The
     * bounds check makes avail >= ip_min, so one unsigned compare tests both ends. */
    c.ip_len = ip_total - ip_min <= avail - ip_min ? ip_total : avail;
    __u16 sport = bpf_ntohs(*(__u16 *)l4);
    __u16 dport = bpf_ntohs(*(__u16 *)(l4 + 2));
    if (sport == DNS_PORT || dport == DNS_PORT)
        return 0;           /* DNS packets are also copied: the general path does both */
    if (proto == IPPROTO_UDP && tunnel_port(dport) && skb->gso_size != 0)
        return 0;           /* a tunnel's super-packet: the general path reads its inner headers */
    struct flow_key key = {};
    __u64 swap;             /* all ones when the destination endpoint is the lower one */
    if (family == FLOWSCOPE_AF_INET) {
        /* (address as a host-order word, port) as one number: endpoint_cmp's order */
        __u64 s = (__u64)*(__u32 *)(ip + 12) << 16 | sport;
        __u64 d = (__u64)*(__u32 *)(ip + 16) << 16 | dport;
        swap = (__u64)((__s64)(d - s) >> 63);   /* no branch: s, d < 2^48 */
        __u64 lo = s ^ ((s ^ d) & swap), hi = d ^ ((s ^ d) & swap);
        *(__u32 *)key.addr_lo = lo >> 16;
        *(__u32 *)key.addr_hi = hi >> 16;
        key.port_lo = lo;
        key.port_hi = hi;
    } else {
        __u64 s0 = *(__u64 *)(ip + 8), s1 = *(__u64 *)(ip + 16);
        __u64 d0 = *(__u64 *)(ip + 24), d1 = *(__u64 *)(ip + 32);
        swap = s0 != d0 ? s0 > d0 : s1 != d1 ? s1 > d1 : sport > dport;
        swap = -swap;
        __u64 *lo = (__u64 *)key.addr_lo, *hi = (__u64 *)key.addr_hi;
        lo[0] = s0 ^ ((s0 ^ d0) & swap);
        lo[1] = s1 ^ ((s1 ^ d1) & swap);
        hi[0] = d0 ^ ((s0 ^ d0) & swap);
        hi[1] = d1 ^ ((s1 ^ d1) & swap);
        key.port_lo = sport ^ ((sport ^ dport) & swap);
        key.port_hi = dport ^ ((sport ^ dport) & swap);
    }
    key.proto = proto;
    key.family = family;
    c.dir = swap & FLOWSCOPE_DIR_HI_LO;
    account_cached(skb, &key, &c);
    return 1;
}

/* The common case, parsed in one pass: no VLAN tag in the data, IPv4 without options
 * and not a non-first fragment, or IPv6 without extension headers, then TCP or UDP
 * (neither port DNS_PORT), headers in the linear area. Returns 1 when the packet was
 * counted, 0 when it needs the general parser, which then does everything (nothing is
 * counted twice: this path decides before it touches the map). Same key, direction and
 * counts as the general path (a privileged test sends the same flows both ways), with
 * fewer instructions: one bounds check per family, each header field read with one
 * load straight from the packet, no parse state in memory (docs/performance.md: ~15
 * ns a packet). The verifier checks no alignment of packet loads on x86-64 and arm64
 * (efficient unaligned access); behind an Ethernet header, with the 2-byte IP alignment
 * the verifier assumes elsewhere, every load here is aligned anyway. */
static __always_inline int handle_common(struct __sk_buff *skb, const int ethernet)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    const __u32 l3_off = ethernet ? ETH_HLEN_ : 0;
    __u8 *ip = data + l3_off;
    /* IPv4 + the 14 TCP header bytes read below (UDP reads 4 of them) */
    if ((void *)(ip + 34) > data_end)
        return 0;
    __u16 l3 = ethernet ? *(__u16 *)(data + 12) : (__u16)skb->protocol;
    __u32 avail = skb->len - l3_off;
    if (l3 == bpf_htons(ETH_P_IP)) {
        /* version 4, IHL 5; fragment offset 0 (the first fragment has the ports) */
        if (((ip[0] ^ 0x45) | (*(__u16 *)(ip + 6) & bpf_htons(0x1fff))) != 0)
            return 0;
        return count_common(skb, ip, ip + 20, ip[9], FLOWSCOPE_AF_INET,
                            bpf_ntohs(*(__u16 *)(ip + 2)), 20, 20, avail);
    }
    if (l3 == bpf_htons(ETH_P_IPV6)) {
        /* version 6 (else the general parser drops it); the 54 bytes in the linear area */
        if ((ip[0] & 0xf0) != 0x60 || (void *)(ip + 54) > data_end)
            return 0;
        /* an extension header is neither TCP nor UDP: general path */
        return count_common(skb, ip, ip + 40, ip[6], FLOWSCOPE_AF_INET6,
                            bpf_ntohs(*(__u16 *)(ip + 4)) + 40, 41, 40, avail);
    }
    return 0;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 direction, const int ethernet)
{
    if (handle_common(skb, ethernet))
        return TC_ACT_UNSPEC;
    return handle_general(skb, direction, ethernet);
}

/* Forwarded packets were counted where they entered this host (see top comment). */
#define FORWARDED(skb) ((skb)->ingress_ifindex != 0)

int flowscope_ingress(struct __sk_buff *skb)
{
    return handle(skb, 0, 1);
}

int flowscope_egress(struct __sk_buff *skb)
{
    if (FORWARDED(skb))
        return TC_ACT_UNSPEC;
    return handle(skb, 1, 1);
}

int flowscope_ingress_ip(struct __sk_buff *skb)
{
    return handle(skb, 0, 0);
}

int flowscope_egress_ip(struct __sk_buff *skb)
{
    if (FORWARDED(skb))
        return TC_ACT_UNSPEC;
    return handle(skb, 1, 0);
}
