/*
 * loadgen: a closed-loop load client for licentia's wire protocol (and anything that
 * answers the same frames); bench/access_release.py compiles it into bench/build/.
 * One thread, epoll, non-blocking sockets, 1 request in flight per connection.
 * Bounded: it stops by itself after warm-up + window (+ at most GRACE_S to finish the
 * requests in flight), and connects only where told (the benchmark passes 127.0.0.1).
 *
 * Frames: 4-byte big-endian length (version byte + body), version byte 0xB1, msgpack
 * map body. The hello and access frames come precomputed (hex on the command line);
 * the release and decrement frames are built here around the handle parsed from the
 * access reply (the reply's msgpack is walked just enough to find "ok", "handle", "code").
 *
 * usage: loadgen HOST PORT CONC WARMUP_S WINDOW_S SERVER_PID MODE HELLO_HEX ACCESS_HEX
 *   MODE pair:      op = access + release on one connection (latency of the pair)
 *   MODE decrement: access once, then op = decrement of 1 unit; release at the end
 * SERVER_PID: the server's CPU (utime + stime of /proc/PID/stat) is read at the start
 * and the end of the window (0: not read).
 * Prints one JSON object on stdout: ops, ops_s, p50_us, p99_us, server_cpu_s,
 * client_cpu_s, window_s, errors, first_error, cpu_busy_s (busy seconds of each CPU in the window).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define GRACE_S 3.0
#define MAX_CONC 4096
#define MAX_FRAME (1 << 20)
#define VERSION_BYTE 0xB1
#define MAX_ERRORS 1000

enum { S_HELLO, S_READY, S_ACCESS, S_RELEASE, S_DECREMENT, S_FINAL_RELEASE, S_DONE };
enum { M_PAIR, M_DECREMENT };

typedef struct {
    int fd;
    int state;
    uint8_t *buf;
    size_t len, cap;
    double t0; /* when the op started */
    uint64_t handle;
} conn_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_self_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

/* utime + stime of a whole process (all its threads), seconds; -1 if unreadable */
static double cpu_of_pid(long pid) {
    if (pid <= 0) return -1;
    char path[64], data[4096];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(data, 1, sizeof data - 1, f);
    fclose(f);
    data[n] = 0;
    char *p = strrchr(data, ')');
    if (!p) return -1;
    p += 2; /* field 3 (state) starts here */
    unsigned long long utime = 0, stime = 0;
    for (int field = 3; field <= 15 && *p; field++) { /* 14 utime, 15 stime */
        char *end = strchr(p, ' ');
        if (field == 14) utime = strtoull(p, NULL, 10);
        if (field == 15) stime = strtoull(p, NULL, 10);
        if (!end) break;
        p = end + 1;
    }
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

#define MAX_CPUS 64

/* busy seconds (user, nice, system, irq, softirq, steal) of each CPU from /proc/stat */
static int cpus_busy_s(double *busy) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < MAX_CPUS) {
        int cpu;
        unsigned long long v[8] = {0};
        if (strncmp(line, "cpu", 3) || line[3] < '0' || line[3] > '9') continue;
        if (sscanf(line + 3, "%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6], &v[7]) < 9 || cpu != n) continue;
        busy[n++] = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
    }
    fclose(f);
    return n;
}

static int unhex(const char *hex, uint8_t **out, size_t *outlen) {
    size_t n = strlen(hex);
    if (n % 2) return -1;
    uint8_t *b = malloc(n / 2 + 1);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) { free(b); return -1; }
        b[i] = (uint8_t)v;
    }
    *out = b;
    *outlen = n / 2;
    return 0;
}

/* ---- just enough msgpack ---- */

static int rd_u(const uint8_t *p, const uint8_t *end, int n, uint64_t *v) {
    if (end - p < n) return -1;
    uint64_t x = 0;
    for (int i = 0; i < n; i++) x = (x << 8) | p[i];
    *v = x;
    return 0;
}

/* skip one object; returns the pointer after it, or NULL */
static const uint8_t *mp_skip(const uint8_t *p, const uint8_t *end, int depth) {
    if (p >= end || depth > 32) return NULL;
    uint8_t t = *p++;
    uint64_t n = 0;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return p;
    if ((t & 0xe0) == 0xa0) { n = t & 0x1f; goto bytes; }
    if ((t & 0xf0) == 0x90) { n = t & 0x0f; goto array; }
    if ((t & 0xf0) == 0x80) { n = t & 0x0f; goto map; }
    switch (t) {
    case 0xcc: case 0xd0: return end - p >= 1 ? p + 1 : NULL;
    case 0xcd: case 0xd1: return end - p >= 2 ? p + 2 : NULL;
    case 0xce: case 0xd2: case 0xca: return end - p >= 4 ? p + 4 : NULL;
    case 0xcf: case 0xd3: case 0xcb: return end - p >= 8 ? p + 8 : NULL;
    case 0xc4: case 0xd9: if (rd_u(p, end, 1, &n)) return NULL; p += 1; goto bytes;
    case 0xc5: case 0xda: if (rd_u(p, end, 2, &n)) return NULL; p += 2; goto bytes;
    case 0xc6: case 0xdb: if (rd_u(p, end, 4, &n)) return NULL; p += 4; goto bytes;
    case 0xdc: if (rd_u(p, end, 2, &n)) return NULL; p += 2; goto array;
    case 0xdd: if (rd_u(p, end, 4, &n)) return NULL; p += 4; goto array;
    case 0xde: if (rd_u(p, end, 2, &n)) return NULL; p += 2; goto map;
    case 0xdf: if (rd_u(p, end, 4, &n)) return NULL; p += 4; goto map;
    case 0xd4: return end - p >= 2 ? p + 2 : NULL;
    case 0xd5: return end - p >= 3 ? p + 3 : NULL;
    case 0xd6: return end - p >= 5 ? p + 5 : NULL;
    case 0xd7: return end - p >= 9 ? p + 9 : NULL;
    case 0xd8: return end - p >= 17 ? p + 17 : NULL;
    case 0xc7: if (rd_u(p, end, 1, &n)) return NULL; p += 1; n += 1; goto bytes;
    case 0xc8: if (rd_u(p, end, 2, &n)) return NULL; p += 2; n += 1; goto bytes;
    case 0xc9: if (rd_u(p, end, 4, &n)) return NULL; p += 4; n += 1; goto bytes;
    default: return NULL;
    }
bytes:
    return (uint64_t)(end - p) >= n ? p + n : NULL;
array:
    for (uint64_t i = 0; i < n; i++) if (!(p = mp_skip(p, end, depth + 1))) return NULL;
    return p;
map:
    for (uint64_t i = 0; i < 2 * n; i++) if (!(p = mp_skip(p, end, depth + 1))) return NULL;
    return p;
}

/* a str header: sets *s and *n, returns the pointer after the string */
static const uint8_t *mp_str(const uint8_t *p, const uint8_t *end, const uint8_t **s, uint64_t *n) {
    if (p >= end) return NULL;
    uint8_t t = *p++;
    if ((t & 0xe0) == 0xa0) *n = t & 0x1f;
    else if (t == 0xd9) { if (rd_u(p, end, 1, n)) return NULL; p += 1; }
    else if (t == 0xda) { if (rd_u(p, end, 2, n)) return NULL; p += 2; }
    else return NULL;
    if ((uint64_t)(end - p) < *n) return NULL;
    *s = p;
    return p + *n;
}

static int mp_uint(const uint8_t *p, const uint8_t *end, uint64_t *v) {
    if (p >= end) return -1;
    uint8_t t = *p++;
    if (t <= 0x7f) { *v = t; return 0; }
    if (t == 0xcc) return rd_u(p, end, 1, v);
    if (t == 0xcd) return rd_u(p, end, 2, v);
    if (t == 0xce) return rd_u(p, end, 4, v);
    if (t == 0xcf) return rd_u(p, end, 8, v);
    return -1;
}

static uint64_t last_code = 0; /* "code" of the last reply read (0: none) */

/* a reply map: *ok, and *handle when there is one. Returns 0 if it parsed. */
static int parse_reply(const uint8_t *p, const uint8_t *end, int *ok, uint64_t *handle, int *has_handle) {
    uint64_t n;
    *ok = 0;
    *has_handle = 0;
    last_code = 0;
    if (p >= end) return -1;
    uint8_t t = *p;
    if ((t & 0xf0) == 0x80) { n = t & 0x0f; p++; }
    else if (t == 0xde) { if (rd_u(p + 1, end, 2, &n)) return -1; p += 3; }
    else return -1;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *k;
        uint64_t kn;
        const uint8_t *v = mp_str(p, end, &k, &kn);
        if (!v) { /* a key that is not a string */
            if (!(p = mp_skip(p, end, 0)) || !(p = mp_skip(p, end, 0))) return -1;
            continue;
        }
        if (kn == 2 && !memcmp(k, "ok", 2)) *ok = (v < end && *v == 0xc3);
        if (kn == 6 && !memcmp(k, "handle", 6) && !mp_uint(v, end, handle)) *has_handle = 1;
        if (kn == 4 && !memcmp(k, "code", 4)) mp_uint(v, end, &last_code);
        if (!(p = mp_skip(v, end, 0))) return -1;
    }
    return 0;
}

static size_t put_uint(uint8_t *o, uint64_t v) {
    if (v <= 0x7f) { o[0] = (uint8_t)v; return 1; }
    if (v <= 0xff) { o[0] = 0xcc; o[1] = (uint8_t)v; return 2; }
    if (v <= 0xffff) { o[0] = 0xcd; o[1] = v >> 8; o[2] = v & 0xff; return 3; }
    if (v <= 0xffffffffULL) { o[0] = 0xce; for (int i = 0; i < 4; i++) o[1 + i] = (v >> (24 - 8 * i)) & 0xff; return 5; }
    o[0] = 0xcf;
    for (int i = 0; i < 8; i++) o[1 + i] = (v >> (56 - 8 * i)) & 0xff;
    return 9;
}

static size_t put_str(uint8_t *o, const char *s) {
    size_t n = strlen(s);
    o[0] = 0xa0 | (uint8_t)n;
    memcpy(o + 1, s, n);
    return n + 1;
}

/* the frame of {"id": id, "op": op, "handle": h [, "units": 1]} */
static size_t build(uint8_t *o, int id, const char *op, uint64_t handle, int with_units) {
    uint8_t *b = o + 5;
    size_t n = 0;
    b[n++] = 0x80 | (with_units ? 4 : 3);
    n += put_str(b + n, "id");
    n += put_uint(b + n, (uint64_t)id);
    n += put_str(b + n, "op");
    n += put_str(b + n, op);
    n += put_str(b + n, "handle");
    n += put_uint(b + n, handle);
    if (with_units) {
        n += put_str(b + n, "units");
        n += put_uint(b + n, 1);
    }
    uint32_t len = (uint32_t)n + 1;
    o[0] = len >> 24; o[1] = (len >> 16) & 0xff; o[2] = (len >> 8) & 0xff; o[3] = len & 0xff;
    o[4] = VERSION_BYTE;
    return n + 5;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static char first_error[256] = "";
static long errors = 0;

static void note_error(const char *what) {
    errors++;
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s (code %llu)", what, (unsigned long long)last_code);
}

/* requests are small and 1 is in flight: a short write means the connection is gone */
static int send_all(int fd, const uint8_t *b, size_t n) {
    ssize_t w = write(fd, b, n);
    if (w == (ssize_t)n) return 0;
    note_error(w < 0 ? "write failed" : "short write");
    return -1;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: %s HOST PORT CONC WARMUP_S WINDOW_S SERVER_PID MODE HELLO_HEX ACCESS_HEX\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    int conc = atoi(argv[3]);
    double warmup = atof(argv[4]), window = atof(argv[5]);
    long server_pid = atol(argv[6]);
    int mode = !strcmp(argv[7], "decrement") ? M_DECREMENT : M_PAIR;
    uint8_t *hello, *access;
    size_t hello_n, access_n;
    if (conc < 1 || conc > MAX_CONC || warmup < 0 || window <= 0 || window > 600 || unhex(argv[8], &hello, &hello_n) ||
        unhex(argv[9], &access, &access_n)) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    conn_t *cs = calloc((size_t)conc, sizeof(conn_t));
    int ep = epoll_create1(0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "bad host\n"); return 2; }
    for (int i = 0; i < conc; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) { perror("connect"); return 1; }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        cs[i].fd = fd;
        cs[i].cap = 65536;
        cs[i].buf = malloc(cs[i].cap);
        cs[i].state = S_HELLO;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (send_all(fd, hello, hello_n)) return 1;
    }

    size_t lat_cap = 1 << 20, lat_n = 0;
    double *lat = malloc(lat_cap * sizeof(double));
    long ops = 0;
    int ready = 0, done = 0, started = 0, in_window = 0, window_over = 0;
    double w_start = 0, w_end = 0, hard_end = now_s() + 30.0; /* the handshake's bound */
    double srv0 = 0, srv1 = 0, cli0 = 0, cli1 = 0;
    double busy0[MAX_CPUS] = {0}, busy1[MAX_CPUS] = {0};
    int ncpu = 0;
    uint8_t out[64];
    struct epoll_event evs[256];

    while (done < conc) {
        int n = epoll_wait(ep, evs, 256, 5);
        double t = now_s();
        if (started && !in_window && !window_over && t >= w_start) {
            in_window = 1;
            srv0 = cpu_of_pid(server_pid);
            cli0 = cpu_self_s();
            ncpu = cpus_busy_s(busy0);
        }
        if (in_window && t >= w_end) {
            in_window = 0;
            window_over = 1;
            srv1 = cpu_of_pid(server_pid);
            cli1 = cpu_self_s();
            cpus_busy_s(busy1);
        }
        if (t > hard_end) { note_error("timed out"); break; }
        for (int e = 0; e < n; e++) {
            conn_t *c = &cs[evs[e].data.u32];
            if (c->state == S_DONE) continue;
            for (;;) {
                if (c->len == c->cap) {
                    if (c->cap >= 2 * MAX_FRAME) { note_error("reply too large"); return 1; }
                    c->cap *= 2;
                    c->buf = realloc(c->buf, c->cap);
                }
                size_t room = c->cap - c->len;
                ssize_t r = read(c->fd, c->buf + c->len, room);
                if (r > 0) { c->len += (size_t)r; if ((size_t)r < room) break; continue; }
                if (r == 0) { note_error("server closed the connection"); c->state = S_DONE; done++; break; }
                if (errno == EAGAIN || errno == EINTR) break;
                note_error("read failed"); c->state = S_DONE; done++; break;
            }
            if (c->state == S_DONE) continue;
            size_t pos = 0;
            while (c->len - pos >= 4) {
                const uint8_t *f = c->buf + pos;
                uint32_t flen = ((uint32_t)f[0] << 24) | ((uint32_t)f[1] << 16) | ((uint32_t)f[2] << 8) | f[3];
                if (flen < 2 || flen > MAX_FRAME) { note_error("bad frame length"); return 1; }
                if (c->len - pos < 4 + (size_t)flen) break;
                pos += 4 + flen;
                int ok = 0, hh = 0;
                uint64_t h = 0;
                if (f[4] != VERSION_BYTE || parse_reply(f + 5, f + 4 + flen, &ok, &h, &hh)) { note_error("unreadable reply"); ok = 0; }
                double tr = now_s();
                int go_on = !window_over && tr < w_end && errors < MAX_ERRORS;
                switch (c->state) {
                case S_HELLO:
                    if (!ok) { note_error("hello refused"); fprintf(stderr, "%s\n", first_error); return 1; }
                    c->state = S_READY;
                    ready++;
                    break;
                case S_ACCESS:
                    if (ok && hh) {
                        c->handle = h;
                        if (mode == M_PAIR) {
                            size_t m = build(out, 3, "release", h, 0);
                            c->state = S_RELEASE;
                            send_all(c->fd, out, m);
                        } else {
                            c->t0 = tr;
                            size_t m = build(out, 4, "decrement", h, 1);
                            c->state = S_DECREMENT;
                            send_all(c->fd, out, m);
                        }
                    } else {
                        note_error("access refused");
                        if (go_on) { c->t0 = tr; send_all(c->fd, access, access_n); }
                        else { c->state = S_DONE; done++; }
                    }
                    break;
                case S_RELEASE:
                case S_DECREMENT:
                    if (!ok) note_error(c->state == S_RELEASE ? "release refused" : "decrement refused");
                    else if (tr >= w_start && tr < w_end) {
                        ops++;
                        if (lat_n == lat_cap) { lat_cap *= 2; lat = realloc(lat, lat_cap * sizeof(double)); }
                        lat[lat_n++] = tr - c->t0;
                    }
                    if (c->state == S_RELEASE) {
                        if (go_on) { c->t0 = tr; c->state = S_ACCESS; send_all(c->fd, access, access_n); }
                        else { c->state = S_DONE; done++; }
                    } else if (go_on) {
                        c->t0 = tr;
                        size_t m = build(out, 4, "decrement", c->handle, 1);
                        send_all(c->fd, out, m);
                    } else {
                        size_t m = build(out, 3, "release", c->handle, 0);
                        c->state = S_FINAL_RELEASE;
                        send_all(c->fd, out, m);
                    }
                    break;
                case S_FINAL_RELEASE:
                    c->state = S_DONE;
                    done++;
                    break;
                default:
                    note_error("unexpected reply");
                }
            }
            if (pos) { memmove(c->buf, c->buf + pos, c->len - pos); c->len -= pos; }
        }
        if (!started && ready == conc) {
            started = 1;
            double t_start = now_s();
            w_start = t_start + warmup;
            w_end = w_start + window;
            hard_end = w_end + GRACE_S;
            for (int i = 0; i < conc; i++) {
                cs[i].t0 = t_start;
                cs[i].state = S_ACCESS;
                if (send_all(cs[i].fd, access, access_n)) return 1;
            }
        }
    }
    if (!window_over) { srv1 = cpu_of_pid(server_pid); cli1 = cpu_self_s(); cpus_busy_s(busy1); }
    for (int i = 0; i < conc; i++) close(cs[i].fd);

    qsort(lat, lat_n, sizeof(double), cmp_double);
    double p50 = lat_n ? lat[(size_t)(0.50 * (lat_n - 1))] : 0;
    double p99 = lat_n ? lat[(size_t)(0.99 * (lat_n - 1))] : 0;
    printf("{\"ops\": %ld, \"ops_s\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"server_cpu_s\": %.3f, "
           "\"client_cpu_s\": %.3f, \"window_s\": %.3f, \"errors\": %ld, \"first_error\": \"%s\", \"cpu_busy_s\": [",
           ops, ops / window, p50 * 1e6, p99 * 1e6, (server_pid > 0 && srv0 >= 0 && srv1 >= 0) ? srv1 - srv0 : -1.0,
           cli1 - cli0, window, errors, first_error);
    for (int i = 0; i < ncpu; i++) printf("%s%.3f", i ? ", " : "", busy1[i] - busy0[i]);
    printf("]}\n");
    return 0;
}
