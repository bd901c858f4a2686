/* safetensors.c: (being written) */
