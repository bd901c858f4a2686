/* sgcheck.c: runs one engine module on a case file written by a PyTorch reference test and writes
 * the result, so the tests in tests/ref can compare the engine with the recipe. */
#include <stdio.h>
#include <string.h>

int check_ops_main(int argc, char **argv);
int check_models_main(int argc, char **argv);
int check_text_main(int argc, char **argv);

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: sgcheck KIND CASE.safetensors OUT.safetensors\n"
                    "  KIND: op, resblock, transformer, unet, decoder, sampler, text-clip, text-gemma2,\n"
                    "        text-conditioner, text-tokenize\n");
    return 2;
  }
  if (!strcmp(argv[1], "op")) return check_ops_main(argc - 1, argv + 1);
  if (!strncmp(argv[1], "text-", 5)) return check_text_main(argc - 1, argv + 1);
  return check_models_main(argc - 1, argv + 1);
}
