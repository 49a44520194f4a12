/* Sleepy cellular firmware: wakes on a timer, resumes its cloud session
 * from retained RAM (or does a full handshake), publishes a reading and
 * sleeps again. The session policy is the build variant:
 *   POLICY_KEEP          keep an unanswered session forever (1.1.x, the bug)
 *   POLICY_EXPIRE=N      discard it after N connects without an
 *                        authenticated reply (1.2.x, the shipped fix)
 *   POLICY_FALLBACK_NOW  fall back to a full handshake in the same wake
 * Console lines have the same format as the simulated boards', so the same
 * fixture patterns turn them into device.boot/wake/sleep events. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "crypto.h"
#include "hal.h"
#include "proto.h"

#ifndef FW_NAME
#error "FW_NAME must name the variant"
#endif
#ifndef FW_VERSION
#error "FW_VERSION must be set"
#endif
#ifndef HONOURS_UNKNOWN
#define HONOURS_UNKNOWN 0
#endif

#define RETAINED_MAGIC 0x54455252u

/* The retained block: it survives a soft reset (the incident's trap) and
 * is lost with power. A checksum tells a valid block from power-on noise;
 * the image id makes a new image start clean. */
typedef struct {
    uint32_t magic;
    uint8_t image_id[8];
    uint32_t boots;
    uint32_t nonces;
    uint32_t has_session;
    uint32_t unanswered_uses;
    rg_session session;
    uint8_t check[16];
} retained_t;

static retained_t *ret;
static const provision_t *prov;
static uint16_t msg_id;
static uint32_t cycle;
static uint8_t dgram[RG_MAX_DATAGRAM];
static uint8_t rxbuf[RG_MAX_DATAGRAM];
static uint8_t plain[RG_MAX_DATAGRAM];

static void retained_sum(const retained_t *r, uint8_t out[16]) {
    uint8_t h[32];
    sha256(r, offsetof(retained_t, check), h);
    memcpy(out, h, 16);
}

static void retained_save(void) { retained_sum(ret, ret->check); }

static void logf_(const char *cat, const char *level, const char *fmt, ...) {
    char line[256];
    int n = snprintf(line, sizeof line, "%010lu [%s] %s: ", (unsigned long)hal_now_ms(), cat, level);
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 2, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 3) n = (int)sizeof line - 3;
    line[n++] = '\r';
    line[n++] = '\n';
    hal_console_write(line, (size_t)n);
}

/* Nonces from the provisioned entropy and a counter that never repeats
 * within a power-on (kept in retained RAM across resets). */
static void random_bytes(uint8_t *out, size_t n) {
    uint8_t h[32];
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, prov->entropy, sizeof prov->entropy);
    sha256_update(&c, &ret->boots, sizeof ret->boots);
    sha256_update(&c, &ret->nonces, sizeof ret->nonces);
    sha256_final(&c, h);
    ret->nonces++;
    retained_save();
    memcpy(out, h, n < 32 ? n : 32);
}

static uint32_t random_below(uint32_t n) {
    uint8_t b[4];
    random_bytes(b, 4);
    uint32_t v = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
    return n ? v % n : 0;
}

static int expired(uint32_t deadline) { return (int32_t)(hal_now_ms() - deadline) >= 0; }
static uint32_t earlier(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0 ? a : b; }

static void drop_session(void) {
    ret->has_session = 0;
    ret->unanswered_uses = 0;
    memset(&ret->session, 0, sizeof ret->session);
    retained_save();
}

enum { END_ACKED, END_DEADLINE, END_UNKNOWN, END_GAVE_UP };

typedef struct {
    uint8_t kind;
    uint16_t msg_id;
    uint8_t flags;
    const uint8_t *payload;
    uint16_t len;
    uint32_t first_sent, next_at;
    int sends, done;
} outstanding_t;

#define MAX_SENT 16

/* Sends confirmables and waits for their answers with CoAP-like
 * retransmission; *authed says whether any authenticated reply arrived. */
static int exchange(outstanding_t *out, int n, uint32_t deadline, int *authed) {
    uint64_t sent[MAX_SENT];
    int nsent = 0, warned = 0;
    *authed = 0;
    for (int i = 0; i < n; i++) {
        size_t len = rg_seal(&ret->session, out[i].flags, out[i].kind, out[i].msg_id, out[i].payload, out[i].len,
                             dgram, sizeof dgram);
        retained_save();
        hal_net_send(dgram, len);
        if (nsent < MAX_SENT) sent[nsent++] = ret->session.tx_counter;
        out[i].first_sent = hal_now_ms();
        out[i].sends = 1;
        out[i].next_at = out[i].first_sent + prov->retransmit_ms;
        out[i].done = 0;
    }
    for (;;) {
        int open = 0;
        uint32_t wake_at = deadline;
        for (int i = 0; i < n; i++) {
            if (out[i].done) continue;
            open++;
            if (out[i].sends <= 4) wake_at = earlier(wake_at, out[i].next_at);
            wake_at = earlier(wake_at, out[i].first_sent + prov->give_up_after_ms);
        }
        if (!open) return END_ACKED;
        if (expired(deadline)) return END_DEADLINE;
        for (int i = 0; i < n; i++) {
            if (!out[i].done && expired(out[i].first_sent + prov->give_up_after_ms)) {
                logf_("coap", "WARN", "no acknowledgement within %lums; discarding session",
                      (unsigned long)prov->give_up_after_ms);
                drop_session();
                return END_GAVE_UP;
            }
        }
        size_t got = hal_net_recv(rxbuf, sizeof rxbuf, wake_at);
        if (got) {
            rg_frame f;
            if (rg_parse(rxbuf, got, &f) != 0) continue;
            if (f.type == RG_RECORD) {
                uint8_t kind;
                uint16_t id, plen;
                if (!rg_open(&ret->session, &f, &kind, &id, plain, &plen)) continue;
                ret->unanswered_uses = 0;
                retained_save();
                *authed = 1;
                uint8_t answers = kind == RG_PONG ? RG_PING : kind == RG_ACK ? RG_PUBLISH : 0;
                for (int i = 0; i < n; i++)
                    if (out[i].kind == answers && out[i].msg_id == id) out[i].done = 1;
            } else if (f.type == RG_SESSION_UNKNOWN) {
                int ours = 0;
                for (int i = 0; i < nsent; i++) ours |= sent[i] == f.counter;
                if (!ours || f.session_id != ret->session.id) continue;
                if (HONOURS_UNKNOWN) return END_UNKNOWN;
                if (!warned) {
                    logf_("cloud", "WARN", "unexpected message type 0x11 from cloud; ignored");
                    warned = 1;
                }
            }
            continue;
        }
        for (int i = 0; i < n; i++) {
            if (out[i].done || out[i].sends > 4 || !expired(out[i].next_at)) continue;
            logf_("coap", "INFO", "retransmitting %s #%u (attempt %d)", out[i].kind == RG_PING ? "ping" : "publish",
                  out[i].msg_id, out[i].sends + 1);
            size_t len = rg_seal(&ret->session, out[i].flags, out[i].kind, out[i].msg_id, out[i].payload, out[i].len,
                                 dgram, sizeof dgram);
            retained_save();
            hal_net_send(dgram, len);
            if (nsent < MAX_SENT) sent[nsent++] = ret->session.tx_counter;
            out[i].sends++;
            out[i].next_at = hal_now_ms() + (prov->retransmit_ms << (out[i].sends - 1));
        }
    }
}

/* Sends a handshake flight and resends it until answered or `deadline`. */
static int flight(rg_handshake *hs, uint32_t deadline, rg_session *done) {
    size_t len = rg_hs_flight(hs, dgram, sizeof dgram);
    hal_net_send(dgram, len);
    int sends = 1;
    uint32_t next = hal_now_ms() + prov->hs_retransmit_ms;
    for (;;) {
        size_t got = hal_net_recv(rxbuf, sizeof rxbuf, sends <= 2 ? earlier(next, deadline) : deadline);
        if (got) {
            rg_frame f;
            if (rg_parse(rxbuf, got, &f) != 0) continue;
            int r = rg_hs_on_frame(hs, &f, done);
            if (r != RG_IGNORED) return r;
            continue;
        }
        if (expired(deadline)) return -1;
        if (sends <= 2 && expired(next)) {
            hal_net_send(dgram, len);
            next = hal_now_ms() + (prov->hs_retransmit_ms << sends);
            sends++;
        }
    }
}

static int handshake(uint32_t deadline) {
    logf_("cloud", "INFO", "starting full handshake");
    uint8_t nonce[16];
    random_bytes(nonce, 16);
    static rg_handshake hs;
    rg_hs_start(&hs, prov->device_id, prov->psk, nonce, RG_HELLO_PADDING);
    rg_session s;
    for (;;) {
        int r = flight(&hs, deadline, &s);
        if (r == RG_NEXT) continue;
        if (r == RG_DONE) break;
        if (r == RG_FAILED) logf_("cloud", "ERROR", "handshake fails authentication (wrong device key?)");
        return 0;
    }
    ret->session = s;
    ret->has_session = 1;
    ret->unanswered_uses = 0;
    retained_save();
    logf_("cloud", "INFO", "handshake complete, session %08lx%08lx", (unsigned long)(s.id >> 32),
          (unsigned long)(s.id & 0xffffffffu));
    return 1;
}

static uint16_t publish_payload(uint8_t *p) {
    const char *topic = "sensors/temp";
    size_t t = strlen(topic);
    memcpy(p, topic, t);
    p[t] = 0;
    int n = snprintf((char *)p + t + 1, 64, "{\"t\":21.5,\"cycle\":%lu}", (unsigned long)cycle);
    size_t len = t + 1 + (size_t)n;
    while (len < t + 1 + 48) p[len++] = ' ';
    return (uint16_t)len;
}

static void connect_and_publish(uint32_t deadline) {
    static uint8_t hello[40], pub[128];
#ifdef POLICY_EXPIRE
    if (ret->has_session && ret->unanswered_uses >= POLICY_EXPIRE) {
        logf_("cloud", "WARN", "session %08lx%08lx unanswered on %d connects; discarding it",
              (unsigned long)(ret->session.id >> 32), (unsigned long)(ret->session.id & 0xffffffffu), POLICY_EXPIRE);
        drop_session();
    }
#endif
    if (ret->has_session) {
        ret->unanswered_uses++;
        retained_save();
        unsigned long hi = (unsigned long)(ret->session.id >> 32), lo = (unsigned long)(ret->session.id & 0xffffffffu);
        logf_("cloud", "INFO", "resuming session %08lx%08lx", hi, lo);
        uint32_t resume_deadline = deadline;
#ifdef POLICY_FALLBACK_NOW
        resume_deadline = earlier(deadline, hal_now_ms() + prov->resume_timeout_ms);
#endif
        memset(hello, ' ', sizeof hello);
        int hn = snprintf((char *)hello, sizeof hello, "hello fw=%s v=%s", FW_NAME, FW_VERSION);
        if (hn < (int)sizeof hello) hello[hn] = ' ';
        outstanding_t out[2] = {
            {.kind = RG_PING, .msg_id = ++msg_id, .flags = RG_FLAG_RESUME, .payload = hello, .len = sizeof hello},
            {.kind = RG_PUBLISH, .msg_id = ++msg_id, .flags = 0, .payload = pub, .len = publish_payload(pub)},
        };
        int authed;
        int end = exchange(out, 2, resume_deadline, &authed);
        if (authed) {
            logf_("cloud", "INFO", "session resumed");
            if (end != END_ACKED) logf_("cloud", "WARN", "publish not acknowledged before sleep");
            return;
        }
        if (end == END_GAVE_UP) return;
        if (end == END_UNKNOWN) {
            logf_("cloud", "WARN", "cloud does not know session %08lx%08lx; discarding it", hi, lo);
            drop_session();
            uint32_t more = hal_now_ms() + prov->awake_window_ms;
            deadline = (int32_t)(more - deadline) > 0 ? more : deadline;
        } else {
#ifdef POLICY_FALLBACK_NOW
            logf_("cloud", "WARN", "no answer to session resume; falling back to a full handshake");
            drop_session();
            uint32_t more = hal_now_ms() + prov->awake_window_ms;
            deadline = (int32_t)(more - deadline) > 0 ? more : deadline;
#else
            logf_("cloud", "WARN", "no answer from cloud; keeping session %08lx%08lx for next wake (unanswered uses: %lu)",
                  hi, lo, (unsigned long)ret->unanswered_uses);
            return;
#endif
        }
    }
    if (handshake(deadline)) {
        outstanding_t out[1] = {
            {.kind = RG_PUBLISH, .msg_id = ++msg_id, .flags = 0, .payload = pub, .len = publish_payload(pub)},
        };
        int authed;
        if (exchange(out, 1, deadline, &authed) != END_ACKED)
            logf_("cloud", "WARN", "publish not acknowledged before sleep");
    } else {
        logf_("cloud", "WARN", "handshake did not complete; retrying on next wake");
    }
}

/* Console commands: `reset` asks for a system reset (SYSRESETREQ), as a
 * firmware's own watchdog or update would. */
static void console_commands(void) {
    char line[64];
    if (hal_console_line(line, sizeof line) && strcmp(line, "reset") == 0) {
        logf_("boot", "WARN", "reset requested on the console");
        hal_system_reset();
    }
}

int app_main(void) {
    /* What a reset clears on the board (.bss); the host build re-enters. */
    cycle = 0;
    msg_id = 0;
    prov = hal_provision();
    ret = hal_retained(sizeof *ret);
    uint8_t image_id[32];
    sha256(FW_NAME " " FW_VERSION, strlen(FW_NAME " " FW_VERSION), image_id);
    uint8_t sum[16];
    retained_sum(ret, sum);
    int valid = ret->magic == RETAINED_MAGIC && ct_equal(sum, ret->check, 16);
    const char *reason = valid ? "soft-reset" : "power-on";
    if (valid && memcmp(ret->image_id, image_id, 8) != 0) {
        /* A new image does not trust the old image's retained RAM. */
        valid = 0;
        reason = "flash";
    }
    if (!valid) {
        memset(ret, 0, sizeof *ret);
        ret->magic = RETAINED_MAGIC;
        memcpy(ret->image_id, image_id, 8);
    }
    ret->boots++;
    retained_save();
    logf_("boot", "INFO", "%s v%s booting (reset reason: %s)", FW_NAME, FW_VERSION, reason);
    if (prov->magic != PROVISION_MAGIC || prov->version != 1) {
        logf_("boot", "ERROR", "no provisioning page: device id and key missing; halting");
        for (;;) hal_sleep_until(hal_now_ms() + 1000);
    }
    if (ret->has_session)
        logf_("boot", "INFO", "retained session %08lx%08lx found", (unsigned long)(ret->session.id >> 32),
              (unsigned long)(ret->session.id & 0xffffffffu));
    const char *wake_reason = "boot";
    for (;;) {
        cycle++;
        logf_("app", "INFO", "wake #%lu reason=%s", (unsigned long)cycle, wake_reason);
        hal_sleep_until(hal_now_ms() + prov->attach_ms);
        logf_("net", "INFO", "cellular attached in %lu.%lus", (unsigned long)(prov->attach_ms / 1000),
              (unsigned long)(prov->attach_ms % 1000 / 100));
        hal_net_drain();
        console_commands();
        connect_and_publish(hal_now_ms() + prov->awake_window_ms);
        if (prov->max_wakes && cycle >= prov->max_wakes) return 0;
        int32_t jitter = prov->sleep_jitter_ms ? (int32_t)random_below(2 * prov->sleep_jitter_ms + 1) - (int32_t)prov->sleep_jitter_ms : 0;
        int32_t ms = (int32_t)prov->sleep_interval_ms + jitter;
        ms = ms < 1000 ? 1000 : ms / 1000 * 1000; /* whole seconds, as an RTC alarm */
        logf_("app", "INFO", "sleeping for %lds", (long)(ms / 1000));
        uint32_t until = hal_now_ms() + (uint32_t)ms;
        /* Woken by every tick; console commands are served while asleep. */
        while (!expired(until)) {
            hal_sleep_until(earlier(until, hal_now_ms() + 100));
            console_commands();
        }
        wake_reason = "rtc";
    }
}
