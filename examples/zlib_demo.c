/* Bundled example for the README: a host program that hands heap buffers to
 * zlib. `examples/demo.sh` records it with `--lib libz.so.1` and analyses the
 * trace: zlib reads the whole input buffer and writes the compressed bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int main(void) {
    const size_t n = 4096;
    unsigned char *in = malloc(n);
    for (size_t i = 0; i < n; i++)
        in[i] = (unsigned char)("ffirec records what a library does to your memory. "[i % 51]);
    uLongf clen = compressBound(n);
    unsigned char *out = malloc(clen);
    int rc = compress2(out, &clen, in, n, 6);
    if (rc != Z_OK) {
        fprintf(stderr, "compress2 failed: %d\n", rc);
        return 1;
    }
    unsigned char *back = malloc(n);
    uLongf blen = n;
    rc = uncompress(back, &blen, out, clen);
    printf("in=%p out=%p back=%p\n", (void *)in, (void *)out, (void *)back);
    printf("compressed %zu -> %lu bytes, round trip %s\n", n, (unsigned long)clen,
           rc == Z_OK && blen == n && memcmp(in, back, n) == 0 ? "ok" : "FAILED");
    free(in);
    free(out);
    free(back);
    return 0;
}
