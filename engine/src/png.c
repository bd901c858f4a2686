/* png.c: (being written) */
