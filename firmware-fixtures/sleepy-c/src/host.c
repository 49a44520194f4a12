/* The same firmware on a POSIX host, for the test suite: datagrams go over
 * a UDP socket to the cloud, the console is stdout, and a "soft reset"
 * re-enters app_main with retained RAM kept.
 *
 *   sleepy-host DEVICE_ID PSK_HEX HOST:PORT WAKES [SLEEP_MS] [RESETS]
 *
 * runs WAKES wake cycles, then (RESETS times) a soft reset and WAKES more. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hal.h"

static provision_t prov;
static int sock = -1;
static struct timespec boot;
static unsigned char retained[1024];

uint32_t hal_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint32_t)((t.tv_sec - boot.tv_sec) * 1000 + (t.tv_nsec - boot.tv_nsec) / 1000000);
}

void hal_sleep_until(uint32_t until_ms) {
    int32_t d = (int32_t)(until_ms - hal_now_ms());
    if (d > 0) usleep((useconds_t)d * 1000);
}

void hal_console_write(const char *s, size_t n) {
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

int hal_console_line(char *buf, size_t cap) {
    (void)buf;
    (void)cap;
    return 0;
}

void hal_net_send(const uint8_t *d, size_t n) {
    if (send(sock, d, n, 0) < 0) perror("send");
}

size_t hal_net_recv(uint8_t *buf, size_t cap, uint32_t until_ms) {
    for (;;) {
        int32_t d = (int32_t)(until_ms - hal_now_ms());
        if (d <= 0) return 0;
        struct pollfd p = {.fd = sock, .events = POLLIN};
        if (poll(&p, 1, d) <= 0) continue;
        ssize_t n = recv(sock, buf, cap, 0);
        if (n > 0) return (size_t)n;
    }
}

void hal_net_drain(void) {
    uint8_t b[4096];
    while (recv(sock, b, sizeof b, MSG_DONTWAIT) > 0) {
    }
}

void hal_system_reset(void) { exit(3); }

const provision_t *hal_provision(void) { return &prov; }

void *hal_retained(size_t size) { return size <= sizeof retained ? retained : NULL; }

static int hex(char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; }

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s DEVICE_ID PSK_HEX HOST:PORT WAKES [SLEEP_MS] [RESETS]\n", argv[0]);
        return 2;
    }
    prov.magic = PROVISION_MAGIC;
    prov.version = 1;
    snprintf(prov.device_id, sizeof prov.device_id, "%s", argv[1]);
    if (strlen(argv[2]) != 64) return 2;
    for (int i = 0; i < 32; i++) {
        int hi = hex(argv[2][2 * i]), lo = hex(argv[2][2 * i + 1]);
        if (hi < 0 || lo < 0) return 2;
        prov.psk[i] = (uint8_t)(hi * 16 + lo);
    }
    FILE *r = fopen("/dev/urandom", "rb");
    if (!r || fread(prov.entropy, 1, 32, r) != 32) return 3;
    fclose(r);
    prov.max_wakes = (uint32_t)atoi(argv[4]);
    prov.sleep_interval_ms = argc > 5 ? (uint32_t)atoi(argv[5]) : 1000;
    prov.awake_window_ms = 3000;
    prov.attach_ms = 10;
    prov.resume_timeout_ms = 1000;
    prov.retransmit_ms = 400;
    prov.give_up_after_ms = 10000;
    prov.hs_retransmit_ms = 300;
    int resets = argc > 6 ? atoi(argv[6]) : 0;

    char host[64];
    snprintf(host, sizeof host, "%s", argv[3]);
    char *colon = strrchr(host, ':');
    if (!colon) return 2;
    *colon = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return 2;
    sock = socket(AF_INET, SOCK_DGRAM, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&a, sizeof a) < 0) return 3;
    for (int i = 0; i <= resets; i++) {
        clock_gettime(CLOCK_MONOTONIC, &boot);
        app_main();
    }
    return 0;
}
