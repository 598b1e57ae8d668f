/* kiln from C: open a model, print the logits of a few tokens, generate with
 * a streaming callback, and show that errors are values.
 *
 *   usage: main [SPEC] [TOKENS]     default: models/tiny/gpt2.toml 1,2,3
 *
 * SPEC is a .toml spec (random weights, seed 0), a Hugging Face folder or a
 * .gguf file. Build against the C ABI crate (runtime/capi):
 *
 *   cargo build -p kiln-capi
 *   gcc -std=c11 -Wall -Iruntime/capi/include examples/c/main.c \
 *       -Ltarget/debug -lkiln_capi -Wl,-rpath,$PWD/target/debug -o kiln-c
 *   ./kiln-c models/tiny/gpt2.toml 1,2,3
 *
 * Output: a line "logits ROWS COLS", then one line per token with COLS
 * floats; "generated N: ..." with the streamed ids; "expected error: ...".
 */
#include "kiln.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what) {
    const char *msg = kiln_last_error();
    fprintf(stderr, "%s failed: %s\n", what, msg ? msg : "(no message)");
    return 1;
}

/* Called by kiln_session_generate with each token as soon as it is chosen. */
static bool on_token(int32_t token, void *user_data) {
    size_t *count = user_data;
    printf(" %d", token);
    fflush(stdout);
    *count += 1;
    return true; /* false would stop generating */
}

/* "1,2,3" -> ids; returns the count (0 on a malformed list). */
static size_t parse_tokens(const char *text, int32_t *ids, size_t cap) {
    size_t n = 0;
    const char *p = text;
    while (*p && n < cap) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) return 0;
        ids[n++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return 0;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *spec = argc > 1 ? argv[1] : "models/tiny/gpt2.toml";
    int32_t tokens[64];
    size_t n = parse_tokens(argc > 2 ? argv[2] : "1,2,3", tokens, 64);
    if (n == 0) {
        fprintf(stderr, "TOKENS must be comma-separated ids, e.g. 1,2,3\n");
        return 2;
    }
    int status = 1;
    float *logits = NULL;
    KilnSession *session = NULL, *gen = NULL;

    KilnModel *model = kiln_model_open(spec, NULL, 0, KILN_BACKEND_JIT);
    if (!model) return fail("kiln_model_open");
    KilnModelInfo info;
    if (kiln_model_info(model, &info) != KILN_STATUS_OK) { fail("kiln_model_info"); goto out; }

    /* Forward: logits for every token, one row each. */
    session = kiln_session_new(model);
    if (!session) { fail("kiln_session_new"); goto out; }
    size_t len = 0;
    /* Ask for the size first (nothing runs), then run into a buffer of that size. */
    if (kiln_session_forward(session, tokens, n, NULL, 0, &len) != KILN_STATUS_BUFFER_TOO_SMALL) {
        fail("kiln_session_forward (size query)");
        goto out;
    }
    logits = malloc(len * sizeof(float));
    if (!logits) goto out;
    if (kiln_session_forward(session, tokens, n, logits, len, &len) != KILN_STATUS_OK) {
        fail("kiln_session_forward");
        goto out;
    }
    printf("logits %zu %zu\n", n, info.vocab_size);
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < info.vocab_size; j++)
            printf(j ? " %.9g" : "%.9g", logits[i * info.vocab_size + j]);
        printf("\n");
    }

    /* Generate greedily from a fresh session, streaming each token. */
    gen = kiln_session_new(model);
    if (!gen) { fail("kiln_session_new"); goto out; }
    KilnGenerateOptions opts = kiln_generate_options_default();
    opts.max_new_tokens = 5;
    int32_t out_ids[5];
    size_t streamed = 0, generated = 0;
    printf("streamed:");
    if (kiln_session_generate(gen, tokens, n, &opts, on_token, &streamed, out_ids, 5, &generated) !=
        KILN_STATUS_OK) {
        printf("\n");
        fail("kiln_session_generate");
        goto out;
    }
    printf("\ngenerated %zu:", generated);
    for (size_t i = 0; i < generated; i++) printf(" %d", out_ids[i]);
    printf("\n");

    /* Errors are values with messages: a token id outside the vocabulary. */
    int32_t bad = (int32_t)info.vocab_size + 7;
    if (kiln_session_forward(session, &bad, 1, logits, len, &len) != KILN_STATUS_ERROR) {
        fprintf(stderr, "an out-of-vocabulary token was accepted\n");
        goto out;
    }
    printf("expected error: %s\n", kiln_last_error());
    status = streamed == generated ? 0 : 1;

out:
    free(logits);
    kiln_session_free(gen);
    kiln_session_free(session);
    kiln_model_free(model);
    return status;
}
