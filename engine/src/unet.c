/* unet.c: (being written) */
