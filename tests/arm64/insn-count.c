/* insn-count.c: counts guest instructions executed, from qemu's `-d in_asm,exec,nochain` log on stdin.
 *
 * Usage: qemu-aarch64 -d in_asm,exec,nochain -D /dev/stderr PROGRAM 2>&1 >/dev/null |
 *            insn-count [START_SYMBOL END_SYMBOL]
 * in_asm prints each translated block once ("IN:" then one "0x<pc>:" line per guest instruction);
 * exec prints "Trace N: <host> [<flags>/<pc>/<flags>/<flags>] <symbol>" for every block executed
 * (nochain makes every block pass through the logging dispatcher). The count of a block is the
 * number of instructions of its latest translation at that pc. With two symbols, also counts the
 * window from the first executed block of START_SYMBOL up to (not including) the first block of
 * END_SYMBOL after it. Prints "total N", "blocks N", and "window N" when a window was seen. */
#include <glib.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc != 1 && argc != 3) {
    fprintf(stderr, "usage: insn-count [START_SYMBOL END_SYMBOL] < qemu-log\n");
    return 2;
  }
  const char *start_symbol = argc == 3 ? argv[1] : NULL, *end_symbol = argc == 3 ? argv[2] : NULL;
  /* pc -> instructions of the block translated there (both held in the pointers, 64-bit host) */
  GHashTable *block_sizes = g_hash_table_new(g_direct_hash, g_direct_equal);
  char line[4096];
  int in_block = 0;
  guint64 block_pc = 0, block_insns = 0;
  uint64_t total = 0, blocks = 0, unknown = 0, window = 0;
  int window_state = 0; /* 0 before, 1 inside, 2 after */

  /* Stores the size of the block being read (a later translation at the same pc replaces it). */
#define FINISH_BLOCK()                                                            \
  do {                                                                            \
    if (in_block && block_insns > 0) {                                            \
      g_hash_table_insert(block_sizes, GSIZE_TO_POINTER((gsize)block_pc),         \
                          GSIZE_TO_POINTER((gsize)block_insns));                  \
    }                                                                             \
    in_block = 0;                                                                 \
  } while (0)

  while (fgets(line, sizeof line, stdin)) {
    if (!strncmp(line, "IN:", 3)) {
      FINISH_BLOCK();
      in_block = 1;
      block_insns = 0;
    } else if (in_block && !strncmp(line, "0x", 2)) {
      if (block_insns == 0) block_pc = strtoull(line + 2, NULL, 16);
      block_insns++;
    } else if (!strncmp(line, "Trace ", 6)) {
      FINISH_BLOCK();
      const char *open = strchr(line, '[');
      const char *slash = open ? strchr(open, '/') : NULL;
      if (!slash) continue;
      guint64 pc = strtoull(slash + 1, NULL, 16);
      gpointer size = g_hash_table_lookup(block_sizes, GSIZE_TO_POINTER((gsize)pc));
      if (!size) {
        unknown++;
        continue;
      }
      const char *symbol = strchr(slash, ']');
      symbol = symbol ? symbol + 1 : "";
      while (*symbol == ' ') symbol++;
      size_t symbol_length = strcspn(symbol, "\r\n");
      if (start_symbol && window_state == 0 && symbol_length == strlen(start_symbol) &&
          !strncmp(symbol, start_symbol, symbol_length)) {
        window_state = 1;
      } else if (end_symbol && window_state == 1 && symbol_length == strlen(end_symbol) &&
                 !strncmp(symbol, end_symbol, symbol_length)) {
        window_state = 2;
      }
      uint64_t insns = GPOINTER_TO_SIZE(size);
      total += insns;
      blocks++;
      if (window_state == 1) window += insns;
    } else if (in_block) {
      FINISH_BLOCK(); /* the blank line after a block */
    }
  }
  FINISH_BLOCK();
  printf("total %" PRIu64 "\nblocks %" PRIu64 "\n", total, blocks);
  if (window_state > 0) printf("window %" PRIu64 "%s\n", window, window_state == 1 ? " (open)" : "");
  if (unknown) printf("untranslated-blocks %" PRIu64 "\n", unknown);
  g_hash_table_destroy(block_sizes);
  return 0;
}
