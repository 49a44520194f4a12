/* The device side of the rig cloud protocol, version 1 (docs/protocol.md),
 * without I/O: frame encoding and parsing, the handshake state machine and
 * sealed records. Mirrors rig/proto/src/client.rs. */
#ifndef RIG_PROTO_H
#define RIG_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define RG_MAX_DATAGRAM 4096
#define RG_NONCE_LEN 16
#define RG_MAC_LEN 16
#define RG_CLIENT_CERT_LEN 1850
#define RG_HELLO_PADDING 120

enum {
    RG_CLIENT_HELLO = 0x01,
    RG_HELLO_VERIFY = 0x02,
    RG_SERVER_HELLO = 0x03,
    RG_CLIENT_FINISHED = 0x04,
    RG_SERVER_FINISHED = 0x05,
    RG_RECORD = 0x10,
    RG_SESSION_UNKNOWN = 0x11,
};

enum { RG_PING = 1, RG_PONG = 2, RG_PUBLISH = 3, RG_ACK = 4 };
#define RG_FLAG_RESUME 0x01

/* A parsed datagram from the cloud; pointers point into the datagram. */
typedef struct {
    uint8_t type;
    uint64_t session_id;
    const uint8_t *cookie;       /* HELLO_VERIFY */
    const uint8_t *server_nonce; /* SERVER_HELLO */
    const uint8_t *cert;         /* SERVER_HELLO */
    uint16_t cert_len;
    const uint8_t *mac;          /* SERVER_HELLO, SERVER_FINISHED */
    uint8_t flags;               /* RECORD */
    uint64_t counter;            /* RECORD, SESSION_UNKNOWN */
    const uint8_t *ct;           /* RECORD */
    uint16_t ct_len;
    const uint8_t *tag;          /* RECORD */
    const uint8_t *aad;          /* RECORD: the header up to the counter, 21 bytes */
} rg_frame;

/* 0 if `b` is a well-formed cloud-to-device frame, -1 otherwise. */
int rg_parse(const uint8_t *b, size_t n, rg_frame *f);

/* An established session, as firmware keeps it in retained RAM. */
typedef struct {
    uint64_t id;
    uint8_t c2s[32], s2c[32], mac[32];
    uint64_t tx_counter; /* last counter used towards the cloud */
    uint64_t rx_counter; /* highest counter accepted from the cloud */
} rg_session;

/* Seals one application message under the next counter; returns the
 * datagram's length (0 if it does not fit `cap`). */
size_t rg_seal(rg_session *s, uint8_t flags, uint8_t kind, uint16_t msg_id, const uint8_t *payload,
               uint16_t len, uint8_t *out, size_t cap);

/* Opens a record from the cloud: ours, fresh and authentic, or 0. Only then
 * is the counter advanced. `payload` must hold ct_len bytes. */
int rg_open(rg_session *s, const rg_frame *f, uint8_t *kind, uint16_t *msg_id, uint8_t *payload,
            uint16_t *len);

enum { RG_HS_HELLO, RG_HS_COOKIED, RG_HS_FINISHING, RG_HS_OVER };
enum { RG_IGNORED, RG_NEXT, RG_DONE, RG_FAILED };

typedef struct {
    char device_id[64];
    uint8_t id_len;
    uint8_t psk[32];
    uint8_t nonce[RG_NONCE_LEN];
    uint16_t padding;
    int stage;
    uint8_t cookie[RG_MAC_LEN];
    uint8_t server_nonce[RG_NONCE_LEN];
    rg_session session; /* keys derived at SERVER_HELLO */
} rg_handshake;

void rg_hs_start(rg_handshake *h, const char *device_id, const uint8_t psk[32], const uint8_t nonce[16],
                 uint16_t padding);
/* The flight to send now (and to resend until answered). */
size_t rg_hs_flight(const rg_handshake *h, uint8_t *out, size_t cap);
/* Takes a frame from the cloud; on RG_DONE the session is in `done`. */
int rg_hs_on_frame(rg_handshake *h, const rg_frame *f, rg_session *done);

/* The session keys of docs/protocol.md "Keys". */
void rg_derive_keys(const uint8_t psk[32], const char *device_id, size_t id_len, const uint8_t cn[16],
                    const uint8_t sn[16], uint64_t sid, rg_session *s);

/* SLIP (RFC 1055) framing of datagrams over a UART. */
#define SLIP_END 0xC0
#define SLIP_ESC 0xDB
#define SLIP_ESC_END 0xDC
#define SLIP_ESC_ESC 0xDD

typedef struct {
    uint8_t buf[RG_MAX_DATAGRAM];
    size_t len;
    int esc;
    int overflow;
} slip_rx;

/* Feeds one byte; returns the datagram's length when one completes, else 0. */
size_t slip_feed(slip_rx *r, uint8_t c);

#endif
