/* What the application needs from a board: a millisecond clock, a way to
 * sleep, the console UART, and datagrams to and from the cloud. mps2.c
 * implements it on the emulated MPS2 board, host.c on a POSIX host. */
#ifndef RIG_HAL_H
#define RIG_HAL_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds since this boot. */
uint32_t hal_now_ms(void);
/* Low-power sleep until `until_ms` (WFI on the board). */
void hal_sleep_until(uint32_t until_ms);
void hal_console_write(const char *s, size_t n);
/* A console command line, if one arrived (NUL-terminated), else 0. */
int hal_console_line(char *buf, size_t cap);
void hal_net_send(const uint8_t *d, size_t n);
/* The next datagram from the cloud, waiting until `until_ms`; its length,
 * or 0 at the deadline. */
size_t hal_net_recv(uint8_t *buf, size_t cap, uint32_t until_ms);
/* Discards whatever arrived while asleep. */
void hal_net_drain(void);
/* Requests a system reset (SYSRESETREQ); does not return on the board. */
void hal_system_reset(void);

/* Per-board provisioning: written by the rig next to the image (a factory
 * configuration page at a fixed flash address on the board). */
#define PROVISION_MAGIC 0x56504752u /* "RGPV" little-endian */
typedef struct {
    uint32_t magic;
    uint32_t version; /* 1 */
    char device_id[64];
    uint8_t psk[32];
    uint8_t entropy[32]; /* fresh from the OS RNG at every power-on */
    uint32_t sleep_interval_ms;
    uint32_t sleep_jitter_ms;
    uint32_t awake_window_ms;
    uint32_t attach_ms;
    uint32_t resume_timeout_ms;   /* fallback_now: wait this long for a resume answer */
    uint32_t retransmit_ms;       /* first confirmable retransmit; doubles 4 times */
    uint32_t give_up_after_ms;    /* a confirmable unanswered this long drops the session */
    uint32_t hs_retransmit_ms;    /* first handshake flight retransmit; doubles once */
    uint32_t max_wakes;           /* host build: stop after this many wakes (0 = never) */
} provision_t;

const provision_t *hal_provision(void);

/* Session state kept in retained RAM (.noinit on the board). */
void *hal_retained(size_t size);

int app_main(void);

#endif
