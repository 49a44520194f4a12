#include "proto.h"

#include <string.h>

#include "crypto.h"

static void put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put_be64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

int rg_parse(const uint8_t *b, size_t n, rg_frame *f) {
    memset(f, 0, sizeof *f);
    if (n < 4 || n > RG_MAX_DATAGRAM || b[0] != 'R' || b[1] != 'G' || b[2] != 1) return -1;
    f->type = b[3];
    const uint8_t *p = b + 4;
    size_t left = n - 4;
    switch (f->type) {
    case RG_HELLO_VERIFY:
        if (left != 16) return -1;
        f->cookie = p;
        return 0;
    case RG_SERVER_HELLO:
        if (left < 8 + 16 + 2) return -1;
        f->session_id = be64(p);
        f->server_nonce = p + 8;
        f->cert_len = be16(p + 24);
        if (left != 26u + f->cert_len + 16u) return -1;
        f->cert = p + 26;
        f->mac = p + 26 + f->cert_len;
        return 0;
    case RG_SERVER_FINISHED:
        if (left != 8 + 16) return -1;
        f->session_id = be64(p);
        f->mac = p + 8;
        return 0;
    case RG_RECORD:
        if (left < 1 + 8 + 8 + 2) return -1;
        f->flags = p[0];
        f->session_id = be64(p + 1);
        f->counter = be64(p + 9);
        f->ct_len = be16(p + 17);
        if (left != 19u + f->ct_len + 16u) return -1;
        f->ct = p + 19;
        f->tag = p + 19 + f->ct_len;
        f->aad = b; /* magic, version, type, flags, session id, counter: 21 bytes */
        return 0;
    case RG_SESSION_UNKNOWN:
        if (left != 16) return -1;
        f->session_id = be64(p);
        f->counter = be64(p + 8);
        return 0;
    default:
        return -1;
    }
}

static void record_nonce(int dir, uint64_t counter, uint8_t n[12]) {
    memset(n, 0, 12);
    n[3] = (uint8_t)dir;
    put_be64(n + 4, counter);
}

size_t rg_seal(rg_session *s, uint8_t flags, uint8_t kind, uint16_t msg_id, const uint8_t *payload,
               uint16_t len, uint8_t *out, size_t cap) {
    size_t ct_len = 5u + len, total = 4 + 19 + ct_len + 16;
    if (total > cap || total > RG_MAX_DATAGRAM) return 0;
    s->tx_counter++;
    out[0] = 'R'; out[1] = 'G'; out[2] = 1; out[3] = RG_RECORD;
    out[4] = flags;
    put_be64(out + 5, s->id);
    put_be64(out + 13, s->tx_counter);
    put_be16(out + 21, (uint16_t)ct_len);
    uint8_t *ct = out + 23;
    ct[0] = kind;
    put_be16(ct + 1, msg_id);
    put_be16(ct + 3, len);
    memcpy(ct + 5, payload, len);
    uint8_t nonce[12];
    record_nonce(0, s->tx_counter, nonce);
    /* aad: magic, version, type, flags, session id, counter (not ct_len) */
    aead_seal(s->c2s, nonce, out, 21, ct, ct_len, ct + ct_len);
    return total;
}

int rg_open(rg_session *s, const rg_frame *f, uint8_t *kind, uint16_t *msg_id, uint8_t *payload,
            uint16_t *len) {
    if (f->type != RG_RECORD || f->session_id != s->id || f->counter <= s->rx_counter || f->ct_len < 5)
        return 0;
    uint8_t nonce[12];
    record_nonce(1, f->counter, nonce);
    memcpy(payload, f->ct, f->ct_len);
    if (!aead_open(s->s2c, nonce, f->aad, 21, payload, f->ct_len, f->tag)) return 0;
    uint16_t plen = be16(payload + 3);
    if (plen != f->ct_len - 5 || payload[0] < RG_PING || payload[0] > RG_ACK) return 0;
    s->rx_counter = f->counter;
    *kind = payload[0];
    *msg_id = be16(payload + 1);
    memmove(payload, payload + 5, plen);
    *len = plen;
    return 1;
}

void rg_derive_keys(const uint8_t psk[32], const char *device_id, size_t id_len, const uint8_t cn[16],
                    const uint8_t sn[16], uint64_t sid, rg_session *s) {
    uint8_t salt[32], info[19 + 8 + 255], okm[96];
    memcpy(salt, cn, 16);
    memcpy(salt + 16, sn, 16);
    memcpy(info, "rig v1 session keys", 19);
    put_be64(info + 19, sid);
    memcpy(info + 27, device_id, id_len);
    hkdf_sha256(salt, 32, psk, 32, info, 27 + id_len, okm, 96);
    memset(s, 0, sizeof *s);
    s->id = sid;
    memcpy(s->c2s, okm, 32);
    memcpy(s->s2c, okm + 32, 32);
    memcpy(s->mac, okm + 64, 32);
}

/* HMAC-SHA256 under mac_key over label || nonces || session id [|| cert], first 16 bytes. */
static void hs_mac(const rg_handshake *h, const char *label, const uint8_t *cert, size_t cert_len,
                   uint8_t out[16]) {
    hmac_ctx c;
    uint8_t sid[8], full[32];
    put_be64(sid, h->session.id);
    hmac_init(&c, h->session.mac, 32);
    hmac_update(&c, label, strlen(label));
    hmac_update(&c, h->nonce, 16);
    hmac_update(&c, h->server_nonce, 16);
    hmac_update(&c, sid, 8);
    if (cert) hmac_update(&c, cert, cert_len);
    hmac_final(&c, full);
    memcpy(out, full, 16);
}

void rg_hs_start(rg_handshake *h, const char *device_id, const uint8_t psk[32], const uint8_t nonce[16],
                 uint16_t padding) {
    memset(h, 0, sizeof *h);
    size_t n = strlen(device_id);
    if (n > sizeof h->device_id - 1) n = sizeof h->device_id - 1;
    memcpy(h->device_id, device_id, n);
    h->id_len = (uint8_t)n;
    memcpy(h->psk, psk, 32);
    memcpy(h->nonce, nonce, 16);
    h->padding = padding;
    h->stage = RG_HS_HELLO;
}

/* Deterministic filler standing in for a certificate chain (handshake.rs). */
static void certificate(uint8_t *out, size_t len, uint8_t seed) {
    for (size_t i = 0; i < len; i++) out[i] = (uint8_t)((uint8_t)i * 31u + seed);
}

size_t rg_hs_flight(const rg_handshake *h, uint8_t *out, size_t cap) {
    if (h->stage == RG_HS_FINISHING) {
        size_t total = 4 + 8 + 2 + RG_CLIENT_CERT_LEN + 16;
        if (total > cap) return 0;
        out[0] = 'R'; out[1] = 'G'; out[2] = 1; out[3] = RG_CLIENT_FINISHED;
        put_be64(out + 4, h->session.id);
        put_be16(out + 12, RG_CLIENT_CERT_LEN);
        uint8_t *cert = out + 14;
        certificate(cert, RG_CLIENT_CERT_LEN, h->id_len);
        hs_mac(h, "client finished", cert, RG_CLIENT_CERT_LEN, cert + RG_CLIENT_CERT_LEN);
        return total;
    }
    int cookied = h->stage == RG_HS_COOKIED;
    size_t total = 4 + 1 + h->id_len + 16 + 1 + (cookied ? 16 : 0) + 2 + h->padding;
    if (total > cap) return 0;
    uint8_t *p = out;
    *p++ = 'R'; *p++ = 'G'; *p++ = 1; *p++ = RG_CLIENT_HELLO;
    *p++ = h->id_len;
    memcpy(p, h->device_id, h->id_len);
    p += h->id_len;
    memcpy(p, h->nonce, 16);
    p += 16;
    if (cookied) {
        *p++ = 16;
        memcpy(p, h->cookie, 16);
        p += 16;
    } else {
        *p++ = 0;
    }
    put_be16(p, h->padding);
    p += 2;
    memset(p, 0, h->padding);
    return total;
}

int rg_hs_on_frame(rg_handshake *h, const rg_frame *f, rg_session *done) {
    uint8_t mac[16];
    switch (h->stage) {
    case RG_HS_HELLO:
        if (f->type != RG_HELLO_VERIFY) return RG_IGNORED;
        memcpy(h->cookie, f->cookie, 16);
        h->stage = RG_HS_COOKIED;
        return RG_NEXT;
    case RG_HS_COOKIED:
        if (f->type != RG_SERVER_HELLO) return RG_IGNORED;
        memcpy(h->server_nonce, f->server_nonce, 16);
        rg_derive_keys(h->psk, h->device_id, h->id_len, h->nonce, h->server_nonce, f->session_id, &h->session);
        hs_mac(h, "server hello", f->cert, f->cert_len, mac);
        if (!ct_equal(mac, f->mac, 16)) {
            h->stage = RG_HS_OVER;
            return RG_FAILED;
        }
        h->stage = RG_HS_FINISHING;
        return RG_NEXT;
    case RG_HS_FINISHING:
        if (f->type != RG_SERVER_FINISHED || f->session_id != h->session.id) return RG_IGNORED;
        hs_mac(h, "server finished", NULL, 0, mac);
        if (!ct_equal(mac, f->mac, 16)) {
            h->stage = RG_HS_OVER;
            return RG_FAILED;
        }
        *done = h->session;
        done->tx_counter = 0;
        done->rx_counter = 0;
        h->stage = RG_HS_OVER;
        return RG_DONE;
    default:
        return RG_IGNORED;
    }
}

size_t slip_feed(slip_rx *r, uint8_t c) {
    if (c == SLIP_END) {
        size_t n = r->overflow ? 0 : r->len;
        r->len = 0;
        r->esc = 0;
        r->overflow = 0;
        return n;
    }
    if (c == SLIP_ESC) {
        r->esc = 1;
        return 0;
    }
    if (r->esc) {
        c = c == SLIP_ESC_END ? SLIP_END : c == SLIP_ESC_ESC ? SLIP_ESC : c;
        r->esc = 0;
    }
    if (r->len < sizeof r->buf) {
        r->buf[r->len++] = c;
    } else {
        r->overflow = 1;
    }
    return 0;
}
