/* flowscope's kernel/user ABI: every struct that crosses to user space, declared once.
 * Mirrored in services/collector/abi.py and checked against bcc's layout at start-up. */
#ifndef FLOWSCOPE_ABI_H
#define FLOWSCOPE_ABI_H

/* ---- socket owners (collector-sockets) ---- */

/* Values of fs_socket_event.event. */
#define FS_SOCK_CONNECT 1 /* TCP client side, established */
#define FS_SOCK_ACCEPT 2  /* TCP server side, established */
#define FS_SOCK_UDP 3     /* UDP socket sent to or received from a peer (once per peer) */
#define FS_SOCK_CLOSE 4   /* TCP connection reported before went to CLOSE */

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
