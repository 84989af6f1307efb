/*
 * c_api_example.c: the usage example at the top of llmc.h, as a program
 * (`make test` builds it against build/libllmc.so and runs it). It trains a
 * tiny GPT-2 on a repeating token pattern for a few steps, saves it, loads
 * it back and checks that both give the same loss.
 */
#include <stdio.h>
#include <stdlib.h>

#include "llmc.h"

#define B 2
#define T 16

static int fail(const char *what, llmc_status st) {
    fprintf(stderr, "%s: %s: %s\n", what, llmc_status_string(st), llmc_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "c_api_example.bin";
    int32_t inputs[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++) {
        inputs[i] = i % 7;
        targets[i] = (i + 1) % 7;
    }

    /* --- the example in llmc.h, line for line --- */
    llmc_config cfg = {.max_seq_len = 64, .vocab_size = 256, .padded_vocab_size = 0,
                       .num_layers = 2, .num_heads = 2, .channels = 32};
    llmc_options opt = llmc_default_options();
    opt.max_batch_size = B; opt.max_seq_len = T;
    llmc_model *m;
    llmc_status st = llmc_init(&cfg, &opt, &m);
    if (st != LLMC_OK) return fail("llmc_init", st);
    llmc_adamw hp = llmc_default_adamw(); hp.lr = 1e-2f;
    float loss, norm;
    for (int step = 0; step < 20; step++) {
        st = llmc_step(m, inputs, targets, 1, B, T, &hp, &loss, &norm);
        if (st != LLMC_OK) return fail("llmc_step", st);
    }
    st = llmc_save(m, path, LLMC_DTYPE_FP32);
    if (st != LLMC_OK) return fail("llmc_save", st);
    llmc_free(m);
    /* --- end of the example --- */

    float trained, reloaded;
    llmc_model *again;
    if ((st = llmc_init_from_file(path, &opt, &again)) != LLMC_OK) return fail("llmc_init_from_file", st);
    if ((st = llmc_eval(again, inputs, targets, B, T, &reloaded, NULL)) != LLMC_OK)
        return fail("llmc_eval", st);
    trained = loss;
    llmc_free(again);
    remove(path);
    /* the loss before the last update is above the reloaded model's loss */
    printf("c_api_example: loss %.4f after 20 steps (before the last update), %.4f reloaded\n",
           trained, reloaded);
    if (!(reloaded < trained) || !(trained < 5.0f)) {
        fprintf(stderr, "c_api_example: the model did not learn the pattern\n");
        return 1;
    }
    return 0;
}
