/* The crypto against the RFC test vectors, and the protocol's sizes
 * against docs/protocol.md. Exit 0 when everything matches. */
#include <stdio.h>
#include <string.h>

#include "crypto.h"
#include "proto.h"

static int failures;

static void unhex(const char *h, uint8_t *out, size_t *n) {
    size_t k = 0;
    for (; h[0] && h[1]; h += 2) {
        unsigned v;
        sscanf(h, "%2x", &v);
        out[k++] = (uint8_t)v;
    }
    if (n) *n = k;
}

static void expect(const char *what, const uint8_t *got, const char *want_hex) {
    uint8_t want[512];
    size_t n;
    unhex(want_hex, want, &n);
    int ok = memcmp(got, want, n) == 0;
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    failures += !ok;
}

int main(void) {
    uint8_t out[256], buf[512];
    size_t n;

    /* FIPS 180-4 examples */
    sha256("abc", 3, out);
    expect("SHA-256 abc", out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    sha256("", 0, out);
    expect("SHA-256 empty", out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256(two, strlen(two), out);
    expect("SHA-256 448 bits", out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    /* RFC 4231 */
    hmac_ctx h;
    uint8_t key[131];
    memset(key, 0x0b, 20);
    hmac_init(&h, key, 20);
    hmac_update(&h, "Hi There", 8);
    hmac_final(&h, out);
    expect("RFC 4231 case 1", out, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    hmac_init(&h, (const uint8_t *)"Jefe", 4);
    hmac_update(&h, "what do ya want for nothing?", 28);
    hmac_final(&h, out);
    expect("RFC 4231 case 2", out, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    memset(key, 0xaa, 131);
    hmac_init(&h, key, 131);
    hmac_update(&h, "Test Using Larger Than Block-Size Key - Hash Key First", 54);
    hmac_final(&h, out);
    expect("RFC 4231 case 6", out, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");

    /* RFC 5869 */
    uint8_t ikm[80], salt[80], info[80];
    size_t ikm_n, salt_n, info_n;
    unhex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", ikm, &ikm_n);
    unhex("000102030405060708090a0b0c", salt, &salt_n);
    unhex("f0f1f2f3f4f5f6f7f8f9", info, &info_n);
    hkdf_sha256(salt, salt_n, ikm, ikm_n, info, info_n, out, 42);
    expect("RFC 5869 case 1", out,
           "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
    hkdf_sha256(NULL, 0, ikm, ikm_n, NULL, 0, out, 42);
    expect("RFC 5869 case 3", out,
           "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");

    /* RFC 8439 */
    uint8_t k[32], nonce[12];
    unhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", k, NULL);
    unhex("000000000000004a00000000", nonce, NULL);
    const char *sun = "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
                      "sunscreen would be it.";
    n = strlen(sun);
    memcpy(buf, sun, n);
    chacha20_xor(k, nonce, 1, buf, n);
    expect("RFC 8439 2.4.2 ChaCha20", buf,
           "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b357"
           "1639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
           "5af90bbf74a35be6b40b8eedf2785e42874d");
    unhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b", k, NULL);
    poly1305(k, (const uint8_t *)"Cryptographic Forum Research Group", 34, out);
    expect("RFC 8439 2.5.2 Poly1305", out, "a8061dc1305136c6c22b8baf0c0127a9");
    unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f", k, NULL);
    unhex("070000004041424344454647", nonce, NULL);
    uint8_t aad[12], tag[16];
    unhex("50515253c0c1c2c3c4c5c6c7", aad, NULL);
    memcpy(buf, sun, n);
    aead_seal(k, nonce, aad, 12, buf, n, tag);
    expect("RFC 8439 2.8.2 AEAD ciphertext", buf,
           "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
           "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
           "3ff4def08e4b7a9de576d26586cec64b6116");
    expect("RFC 8439 2.8.2 AEAD tag", tag, "1ae10b594f09e26a7e902ecbd0600691");
    int opened = aead_open(k, nonce, aad, 12, buf, n, tag);
    int ok = opened && memcmp(buf, sun, n) == 0;
    printf("%s RFC 8439 2.8.2 AEAD open\n", ok ? "ok  " : "FAIL");
    failures += !ok;
    tag[0] ^= 1;
    ok = !aead_open(k, nonce, aad, 12, buf, n, tag);
    printf("%s AEAD refuses a flipped tag bit\n", ok ? "ok  " : "FAIL");
    failures += !ok;

    /* docs/protocol.md sizes */
    rg_handshake hs;
    uint8_t psk[32] = {0}, cn[16] = {0};
    rg_hs_start(&hs, "sleepy-01", psk, cn, RG_HELLO_PADDING);
    size_t hello = rg_hs_flight(&hs, buf, sizeof buf);
    ok = hello == 153;
    printf("%s CLIENT_HELLO is 153 B (%zu)\n", ok ? "ok  " : "FAIL", hello);
    failures += !ok;

    printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
