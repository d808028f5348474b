/* wanemu: a userspace WAN emulator for the ScanBeam test network (docs/netlab.md).
 *
 * It owns one TUN device in the "wan" router namespace. Policy routing sends every packet
 * forwarded between segments into the TUN device; wanemu reads it, may drop it (loss, full
 * queue), holds it for its serialisation time (rate) plus the one-way delay (and jitter), and
 * writes it back into the same TUN device, from where the kernel routes it to its destination.
 *
 * Model: one egress queue per destination /24 (like a router port into that segment), FIFO
 * (jitter never reorders), a byte-bounded backlog of packets waiting for serialisation (tail
 * drop), Bernoulli loss before the queue. Parameters come from the command line and are re-read
 * from --params FILE on SIGHUP ("delay_us jitter_us loss_ppm rate_bps queue_bytes"). On SIGTERM
 * or SIGINT it prints one JSON line of counters to stdout and exits.
 *
 * Speed: one read and one write system call per packet. While the loss rate is zero the TUN
 * device takes TCP segmentation offload (TUNSETOFFLOAD), so a TCP burst arrives as one GSO
 * packet of up to 64 KiB and is counted at its on-the-wire size (segments x headers); with
 * loss it is turned off, so every drop is one MTU-sized packet as on a real link.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define VNET 10 /* struct virtio_net_hdr in front of every packet (IFF_VNET_HDR) */
#define SLOT (VNET + 65536)
#define MAXQ 64
#define BATCH 256

typedef struct {
    uint64_t delay_ns, jitter_ns, rate_bps, queue_bytes;
    uint32_t loss_ppm;
} params_t;

typedef struct {
    uint32_t key;          /* destination address & 255.255.255.0 */
    int head, tail;        /* slot indices, -1 when empty */
    uint64_t free_at;      /* when the link into this segment finishes its backlog (ns) */
    uint64_t last_depart;  /* FIFO: departures never go backwards */
} queue_t;

static params_t P;
static const char *params_file;
static volatile sig_atomic_t reload, stop;
static unsigned char *pool;
static int *next_slot, *len_slot;
static uint64_t *depart_slot;
static int free_head = -1, nslots;
static queue_t queues[MAXQ];
static int nq;
static uint64_t rng = 88172645463325252ULL;
static unsigned long long c_in, c_out, c_loss, c_qdrop, c_pooldrop, c_bytes_out, c_wfail;

static uint64_t wire_len(const unsigned char *slot, int len);

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void on_signal(int sig) {
    if (sig == SIGHUP)
        reload = 1;
    else
        stop = 1;
}

static int read_params(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    unsigned long long d, j, l, r, q;
    int n = fscanf(f, "%llu %llu %llu %llu %llu", &d, &j, &l, &r, &q);
    fclose(f);
    if (n != 5 || l > 1000000) return -1;
    P.delay_ns = d * 1000ULL;
    P.jitter_ns = j * 1000ULL;
    P.loss_ppm = (uint32_t)l;
    P.rate_bps = r;
    P.queue_bytes = q;
    return 0;
}

static queue_t *queue_for(const unsigned char *pkt, int len) {
    uint32_t key = 0;
    if (len >= 20 && (pkt[0] >> 4) == 4)
        key = ((uint32_t)pkt[16] << 24) | ((uint32_t)pkt[17] << 16) | ((uint32_t)pkt[18] << 8);
    for (int i = 0; i < nq; i++)
        if (queues[i].key == key) return &queues[i];
    if (nq == MAXQ) return &queues[MAXQ - 1];
    queue_t *q = &queues[nq++];
    q->key = key;
    q->head = q->tail = -1;
    q->free_at = q->last_depart = 0;
    return q;
}

/* Decide the fate of the packet in slot s (already read); returns 1 when queued. */
static int enqueue(int s, uint64_t now) {
    int len = len_slot[s];
    if (P.loss_ppm && (xorshift() % 1000000ULL) < P.loss_ppm) {
        c_loss++;
        return 0;
    }
    unsigned char *slot = pool + (size_t)s * SLOT;
    queue_t *q = queue_for(slot + VNET, len - VNET);
    uint64_t wire = wire_len(slot, len);
    uint64_t start = q->free_at > now ? q->free_at : now;
    if (P.rate_bps) {
        uint64_t backlog = (start - now) * P.rate_bps / 8000000000ULL; /* bytes not yet sent */
        if (P.queue_bytes && backlog > 0 && backlog + wire > P.queue_bytes) {
            c_qdrop++;
            return 0;
        }
        start += wire * 8ULL * 1000000000ULL / P.rate_bps;
    }
    q->free_at = start;
    uint64_t dep = start + P.delay_ns;
    if (P.jitter_ns) {
        uint64_t span = 2 * P.jitter_ns + 1;
        int64_t j = (int64_t)(xorshift() % span) - (int64_t)P.jitter_ns;
        dep = (int64_t)dep + j < (int64_t)start ? start : (uint64_t)((int64_t)dep + j);
    }
    if (dep < q->last_depart) dep = q->last_depart;
    q->last_depart = dep;
    depart_slot[s] = dep;
    next_slot[s] = -1;
    if (q->tail >= 0)
        next_slot[q->tail] = s;
    else
        q->head = s;
    q->tail = s;
    return 1;
}

static void release(int s) {
    next_slot[s] = free_head;
    free_head = s;
}

static int tun_fd = -1;

static void set_offload(void) {
    unsigned int off = P.loss_ppm ? 0 : (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
    if (ioctl(tun_fd, TUNSETOFFLOAD, off) < 0) perror("wanemu: TUNSETOFFLOAD");
}

/* bytes this packet occupies on the wire (GSO packets become several segments) */
static uint64_t wire_len(const unsigned char *slot, int len) {
    const struct virtio_net_hdr *h = (const struct virtio_net_hdr *)slot;
    const unsigned char *pkt = slot + VNET;
    uint64_t n = (uint64_t)(len - VNET);
    if (h->gso_type == VIRTIO_NET_HDR_GSO_NONE || h->gso_size == 0 || n < 40) return n;
    uint64_t hl = 0;
    if ((pkt[0] >> 4) == 4) {
        hl = (uint64_t)(pkt[0] & 15) * 4;
        if (pkt[9] == 6 && n > hl + 13) hl += (uint64_t)(pkt[hl + 12] >> 4) * 4;
        else hl += 8;
    } else {
        hl = 40 + 20;
    }
    if (n <= hl) return n;
    uint64_t segs = (n - hl + h->gso_size - 1) / h->gso_size;
    return n + (segs - 1) * hl;
}

static int tun_open(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        perror("wanemu: open /dev/net/tun");
        return -1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        perror("wanemu: TUNSETIFF");
        return -1;
    }
    int hdr = VNET;
    if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) {
        perror("wanemu: TUNSETVNETHDRSZ");
        return -1;
    }
    return fd;
}

static void usage(void) {
    fprintf(stderr,
            "usage: wanemu --tun NAME [--delay-us N] [--jitter-us N] [--loss-ppm N]\n"
            "              [--rate-bps N] [--queue-bytes N] [--slots N] [--seed N]\n"
            "              [--params FILE] [--ready FILE]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *tun = NULL, *ready = NULL;
    nslots = 16384;
    P.queue_bytes = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--tun")) tun = v;
        else if (!strcmp(a, "--delay-us")) P.delay_ns = strtoull(v, NULL, 10) * 1000ULL;
        else if (!strcmp(a, "--jitter-us")) P.jitter_ns = strtoull(v, NULL, 10) * 1000ULL;
        else if (!strcmp(a, "--loss-ppm")) P.loss_ppm = (uint32_t)strtoul(v, NULL, 10);
        else if (!strcmp(a, "--rate-bps")) P.rate_bps = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--queue-bytes")) P.queue_bytes = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--slots")) nslots = atoi(v);
        else if (!strcmp(a, "--seed")) rng = strtoull(v, NULL, 10) | 1ULL;
        else if (!strcmp(a, "--params")) params_file = v;
        else if (!strcmp(a, "--ready")) ready = v;
        else usage();
    }
    if (!tun || nslots < 16 || P.loss_ppm > 1000000) usage();
    if (params_file && read_params(params_file) < 0) {
        fprintf(stderr, "wanemu: cannot read params from %s\n", params_file);
        return 2;
    }
    int fd = tun_open(tun);
    if (fd < 0) return 1;
    tun_fd = fd;
    set_offload();
    pool = malloc((size_t)nslots * SLOT);
    next_slot = malloc(sizeof(int) * (size_t)nslots);
    len_slot = malloc(sizeof(int) * (size_t)nslots);
    depart_slot = malloc(sizeof(uint64_t) * (size_t)nslots);
    if (!pool || !next_slot || !len_slot || !depart_slot) {
        fprintf(stderr, "wanemu: out of memory\n");
        return 1;
    }
    for (int s = nslots - 1; s >= 0; s--) release(s);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (ready) {
        FILE *f = fopen(ready, "w");
        if (f) {
            fprintf(f, "%d\n", (int)getpid());
            fclose(f);
        }
    }
    unsigned char scratch[SLOT];
    while (!stop) {
        if (reload) {
            reload = 0;
            if (params_file && read_params(params_file) < 0)
                fprintf(stderr, "wanemu: bad params file, keeping the old ones\n");
            set_offload();
        }
        uint64_t now = now_ns();
        /* send everything due */
        uint64_t next = UINT64_MAX;
        for (int i = 0; i < nq; i++) {
            queue_t *q = &queues[i];
            while (q->head >= 0 && depart_slot[q->head] <= now) {
                int s = q->head;
                q->head = next_slot[s];
                if (q->head < 0) q->tail = -1;
                ssize_t w = write(fd, pool + (size_t)s * SLOT, (size_t)len_slot[s]);
                if (w < 0) c_wfail++;
                else {
                    c_out++;
                    c_bytes_out += (unsigned long long)(w - VNET);
                }
                release(s);
            }
            if (q->head >= 0 && depart_slot[q->head] < next) next = depart_slot[q->head];
        }
        /* read a batch */
        int got = 0;
        for (; got < BATCH; got++) {
            int s = free_head;
            unsigned char *buf = s >= 0 ? pool + (size_t)s * SLOT : scratch;
            ssize_t n = read(fd, buf, SLOT);
            if (n <= VNET) break;
            c_in++;
            if (s < 0) {
                c_pooldrop++;
                continue;
            }
            free_head = next_slot[s];
            len_slot[s] = (int)n;
            if (!enqueue(s, now_ns())) release(s);
        }
        if (got > 0) continue; /* more may be waiting; loop sends what is due first */
        int timeout_ms = -1;
        struct timespec ts;
        struct timespec *tsp = NULL;
        if (next != UINT64_MAX) {
            uint64_t t = now_ns();
            uint64_t wait = next > t ? next - t : 0;
            ts.tv_sec = (time_t)(wait / 1000000000ULL);
            ts.tv_nsec = (long)(wait % 1000000000ULL);
            tsp = &ts;
            timeout_ms = 0;
        }
        (void)timeout_ms;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = ppoll(&pfd, 1, tsp, NULL);
        if (r < 0 && errno != EINTR) {
            perror("wanemu: ppoll");
            break;
        }
    }
    printf("{\"in\": %llu, \"out\": %llu, \"bytes_out\": %llu, \"loss\": %llu, \"queue_drop\": %llu, "
           "\"pool_drop\": %llu, \"write_fail\": %llu}\n",
           c_in, c_out, c_bytes_out, c_loss, c_qdrop, c_pooldrop, c_wfail);
    fflush(stdout);
    return 0;
}
