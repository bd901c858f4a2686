/* insn-count.c: counts guest instructions executed, from qemu's `-d in_asm,exec,nochain` log on stdin.
 *
 * Usage: qemu-aarch64 -d in_asm,exec,nochain -D /dev/stderr PROGRAM 2>&1 >/dev/null |
 *            insn-count [START_SYMBOL END_SYMBOL]
 * in_asm prints each translated block once ("IN:" then one "0x<pc>:" line per guest instruction);
 * exec prints "Trace N: <host> [<flags>/<pc>/<flags>/<flags>] <symbol>" for every block executed
 * (nochain makes every block pass through the logging dispatcher). The count of a block is the
 * number of instructions of its latest translation at that pc. With two symbols, also counts the
 * window from the first executed block of START_SYMBOL up to (not including) the first block of
 * END_SYMBOL after it. Prints "total N", "blocks N", and "window N" when a window was seen.
 * With INSN_COUNT_TOP=n in the environment, also the n largest shares of the window (or of the
 * whole run) by symbol, or by 1 MiB code region where qemu knows no symbol (shared libraries). */
#include <glib.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *name;
  guint64 count;
} share;

static gint by_count(gconstpointer a, gconstpointer b) {
  const share *x = a, *y = b;
  return x->count < y->count ? 1 : x->count > y->count ? -1 : 0;
}

/* Prints the top shares of a name -> count table. */
static void print_top(GHashTable *shares, int top, guint64 total) {
  GArray *list = g_array_new(FALSE, FALSE, sizeof(share));
  GHashTableIter iter;
  gpointer key, value;
  g_hash_table_iter_init(&iter, shares);
  while (g_hash_table_iter_next(&iter, &key, &value)) {
    share item = {key, *(guint64 *)value};
    g_array_append_val(list, item);
  }
  g_array_sort(list, by_count);
  for (guint i = 0; i < list->len && (int)i < top; i++) {
    share *item = &g_array_index(list, share, i);
    printf("top %12" G_GUINT64_FORMAT " %5.1f%% %s\n", item->count,
           total ? 100.0 * (double)item->count / (double)total : 0.0, item->name);
  }
  g_array_free(list, TRUE);
}

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
  const char *top_text = getenv("INSN_COUNT_TOP");
  int top = top_text ? atoi(top_text) : 0;
  GHashTable *shares = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

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
      if (top > 0 && (window_state == 1 || !start_symbol)) {
        char name[256];
        if (symbol_length > 0) {
          snprintf(name, sizeof name, "%.*s", (int)symbol_length, symbol);
        } else {
          snprintf(name, sizeof name, "region 0x%" G_GINT64_MODIFIER "x00000", pc >> 20);
        }
        guint64 *count = g_hash_table_lookup(shares, name);
        if (!count) {
          count = g_new0(guint64, 1);
          g_hash_table_insert(shares, g_strdup(name), count);
        }
        *count += insns;
      }
    } else if (in_block) {
      FINISH_BLOCK(); /* the blank line after a block */
    }
  }
  FINISH_BLOCK();
  printf("total %" PRIu64 "\nblocks %" PRIu64 "\n", total, blocks);
  if (window_state > 0) printf("window %" PRIu64 "%s\n", window, window_state == 1 ? " (open)" : "");
  if (unknown) printf("untranslated-blocks %" PRIu64 "\n", unknown);
  if (top > 0) print_top(shares, top, start_symbol ? window : total);
  g_hash_table_destroy(shares);
  g_hash_table_destroy(block_sizes);
  return 0;
}
