/* flowscope_abi.h — every struct that crosses the kernel/user boundary, declared once.
 *
 * The Python mirror is services/collector/abi.py (ctypes). At start-up the collector
 * compares each mirror's size and field offsets with the layout bcc derives from the
 * compiled program and refuses to run on a mismatch; tests/unit/collector/test_flow_abi.py
 * pins the layout with golden bytes. Change both files together, and bump ABI_VERSION.
 *
 * Layout rules: fixed-width types only, explicit padding, every struct a multiple of 8
 * bytes, so the C and ctypes layouts agree without relying on compiler packing.
 *
 * Compile-time constants come from -D flags set by services/collector/loading.py; the
 * defaults below only keep editors and stand-alone compiles happy.
 */
#ifndef FLOWSCOPE_ABI_H
#define FLOWSCOPE_ABI_H

#define FLOWSCOPE_ABI_VERSION 3

#ifndef MAX_FLOWS
#define MAX_FLOWS 65536          /* entries of the flow map (settings flows.max_entries) */
#endif
#ifndef FLOW_CACHE_SLOTS
#define FLOW_CACHE_SLOTS 1024    /* flow cache slots per half per CPU, a power of two; 0: no
                                  * cache (settings flows.cache_slots) */
#endif
#ifndef DNS_PORT
#define DNS_PORT 53              /* UDP/TCP port whose packets are copied (dns.port) */
#endif
#ifndef DNS_CAPTURE_LEN
#define DNS_CAPTURE_LEN 512      /* bytes copied per DNS packet, from the IP header on */
#endif
#ifndef DNS_RINGBUF_PAGES
#define DNS_RINGBUF_PAGES 64     /* ring buffer size in pages (a power of two) */
#endif

/* Address families in flow_key.family. */
#define FLOWSCOPE_AF_INET 4
#define FLOWSCOPE_AF_INET6 6

/* Directions of a packet relative to the flow key: lo→hi or hi→lo. */
#define FLOWSCOPE_DIR_LO_HI 0
#define FLOWSCOPE_DIR_HI_LO 1

/* A flow, direction-free. The two endpoints are ordered ("canonical"): the endpoint
 * whose (address bytes, port) compares lower is `lo`, so both directions of a
 * connection find the same map entry. IPv4 addresses occupy the first 4 bytes of the
 * 16-byte fields, the rest zero. Ports are in host byte order. For ICMP/ICMPv6 the
 * "ports" are (message type, counterpart type) for request/reply pairs (echo, …) and
 * (type, code) for one-way messages, as Community ID does, so an echo request and its
 * reply aggregate into one flow. Non-first fragments have no ports (0, 0). */
struct flow_key {
    __u8  addr_lo[16];
    __u8  addr_hi[16];
    __u16 port_lo;
    __u16 port_hi;
    __u8  proto;            /* IANA protocol number */
    __u8  family;           /* FLOWSCOPE_AF_INET or FLOWSCOPE_AF_INET6 */
    __u8  pad[2];
};                          /* 40 bytes */

/* Counters of one flow since user space last drained it. Indices [0]/[1] are the
 * directions lo→hi and hi→lo. Bytes are IP-level: IP header + payload, no L2 header
 * (for a GSO/GRO super-packet, the headers each wire segment carries are added back, and
 * packets counts wire segments). first_tick/last_tick are bpf_jiffies64(): timer ticks
 * (1/HZ, 1-4 ms), converted to CLOCK_MONOTONIC by user space through struct clock_pair. */
struct flow_value {
    __u64 first_tick;
    __u64 last_tick;
    __u64 packets[2];
    __u64 bytes[2];
    __u64 tcp_flags;        /* union of TCP flag bytes seen in either direction (FIN=bit 0);
                             * 64-bit because BPF atomic OR needs 64 bits without alu32 */
    __u32 ifindex;          /* interface of the first packet */
    __u8  fwd;              /* "forward" direction (FLOWSCOPE_DIR_*): first packet's, or SYN sender's */
    __u8  initiator;        /* 1: a SYN without ACK was seen from the forward source */
    __u8  pad[2];
};                          /* 64 bytes */

/* One slot of the per-CPU flow cache (docs/collector.md, "Flow cache"): a flow's
 * counters since it was installed, in the same form as the flow map's value, valid only
 * while `generation` equals the generation the slot's half was written under. The
 * program counts a cached flow's packets here with plain adds and moves the slot into the
 * flow map when another flow takes the slot; user space reads the half of the previous
 * generation at each drain and merges its valid slots with the map's entries. */
struct flow_cache_slot {
    struct flow_key key;
    struct flow_value value;
    __u64 generation;
    __u64 first_ns;         /* bpf_ktime_get_ns() of the slot's first packet: orders one
                             * flow's slots on several CPUs within a tick, so that the
                             * record's forward direction is the first packet's */
};                          /* 120 bytes */

/* One reading of the tick counter and CLOCK_MONOTONIC_COARSE taken together (array
 * `clock_pair`, written by the first new flow). Both advance in the same timer tick, so
 * any one pair converts every tick value: ns = coarse_ns + (tick - jiffies) * TICK_NSEC
 * (TICK_NSEC is CLOCK_MONOTONIC_COARSE's resolution), exact to one tick. */
struct clock_pair {
    __u64 jiffies;
    __u64 coarse_ns;
};                          /* 16 bytes */

/* Per-CPU counters of what the kernel could not deliver (never silent). User space sums
 * the CPUs and exports them as metrics. */
struct collector_counters {
    __u64 map_full_packets;    /* packets not aggregated: flow map full (-E2BIG/-ENOMEM) */
    __u64 map_full_bytes;      /* their IP-level bytes */
    __u64 dns_ringbuf_full;    /* DNS packets not copied: ring buffer reserve failed */
    __u64 dns_captured;        /* DNS packets copied to the ring buffer */
};                             /* 32 bytes */

/* One captured DNS packet (UDP or TCP, source or destination port DNS_PORT), written to
 * the ring buffer `dns_events`.
 *
 * Contract with the parser (services/collector/dns_parsing.py): data[:cap_len] holds the
 * packet from the first byte of the IP header (IPv4 or IPv6; the version nibble says
 * which) onward, truncated to DNS_CAPTURE_LEN bytes; pkt_len is the IP-level length of
 * the whole packet, so cap_len < pkt_len means truncated. The parser finds the L4 header
 * itself (IPv4 IHL, IPv6 extension headers) and, for TCP, the 2-byte length prefix. */
struct dns_event {
    __u64 ts_ns;            /* bpf_ktime_get_ns() */
    __u32 ifindex;          /* interface the packet was seen on */
    __u32 pkt_len;          /* IP-level length of the packet */
    __u16 cap_len;          /* bytes valid in data */
    __u8  direction;        /* 0: TC ingress, 1: TC egress */
    __u8  pad[5];
    __u8  data[DNS_CAPTURE_LEN];
};                          /* 24 + DNS_CAPTURE_LEN bytes */

/* ==== collector-sockets: socket-owner structs below this line (owned by that helper) ==== */

/* ---- socket owners (collector-sockets) ---- */

/* Values of fs_socket_event.event. */
#define FS_SOCK_CONNECT 1 /* TCP client side, established */
#define FS_SOCK_ACCEPT 2  /* TCP server side, established */
#define FS_SOCK_UDP 3     /* UDP socket sent to or received from a peer (once per peer) */
#define FS_SOCK_CLOSE 4   /* TCP connection reported before went to CLOSE; UDP socket that reported a peer released (remote unspecified) */

/* One socket-owner event (ring buffer "socket_events"); 96 bytes, no implicit padding.
 * Addresses are in network byte order, IPv4 in the first 4 bytes; ports in host order.
 * src/sport are the local end, dst/dport the remote end. pid 0 = owner unknown. */
struct fs_socket_event {
    __u64 time_ns;   /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
    __u64 cookie;    /* socket cookie */
    __u64 cgroup_id; /* owner's cgroup v2 id */
    __u64 netns;     /* network namespace cookie, 0 if unknown */
    __u32 pid;       /* owner's tgid */
    __u32 tid;       /* owner's thread id */
    __u8 saddr[16];
    __u8 daddr[16];
    __u16 sport;
    __u16 dport;
    __u8 family; /* AF_INET (2) or AF_INET6 (10) */
    __u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 event;  /* FS_SOCK_* */
    __u8 pad;
    char comm[16];
};

#endif /* FLOWSCOPE_ABI_H */
