/* The protocol's primitives: SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104,
 * vectors RFC 4231), HKDF-SHA256 (RFC 5869) and ChaCha20-Poly1305 (RFC 8439).
 * Written for a Cortex-M3 without libraries: no heap, no tables beyond the
 * SHA-256 round constants, constant-time tag comparison. */
#ifndef RIG_CRYPTO_H
#define RIG_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint8_t buf[64];
    uint64_t len;
    size_t fill;
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t n);
void sha256_final(sha256_ctx *c, uint8_t out[32]);
void sha256(const void *data, size_t n, uint8_t out[32]);

typedef struct {
    sha256_ctx inner, outer;
} hmac_ctx;

void hmac_init(hmac_ctx *c, const uint8_t *key, size_t key_len);
void hmac_update(hmac_ctx *c, const void *data, size_t n);
void hmac_final(hmac_ctx *c, uint8_t out[32]);

/* HKDF-SHA256 extract-and-expand; out_len <= 255 * 32. */
int hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len);

/* ChaCha20 (RFC 8439 §2.4): XORs n bytes of keystream into buf in place. */
void chacha20_xor(const uint8_t key[32], const uint8_t nonce[12], uint32_t counter, uint8_t *buf, size_t n);

/* Poly1305 (RFC 8439 §2.5) one-shot. */
void poly1305(const uint8_t key[32], const uint8_t *msg, size_t n, uint8_t tag[16]);

/* AEAD_CHACHA20_POLY1305 (RFC 8439 §2.8), in place. */
void aead_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aad_len,
               uint8_t *buf, size_t n, uint8_t tag[16]);
/* Returns 1 and decrypts if the tag verifies; 0 and leaves buf alone otherwise. */
int aead_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad, size_t aad_len,
              uint8_t *buf, size_t n, const uint8_t tag[16]);

/* Constant-time comparison: 1 if equal. */
int ct_equal(const uint8_t *a, const uint8_t *b, size_t n);

#endif
