/*
 * tap.h — the few TAP helpers the C unit tests share: `ok N - name` lines,
 * a plan at the end, and an exit status pytest reads.
 */
#ifndef RAPPORT_TAP_H
#define RAPPORT_TAP_H

#include <stdio.h>

static int tap_n, tap_failed;

#define ok(cond, ...) do { \
	tap_n++; \
	if (cond) { printf("ok %d - ", tap_n); } \
	else { printf("not ok %d - ", tap_n); tap_failed++; \
	       fprintf(stderr, "# failed at %s:%d\n", __FILE__, __LINE__); } \
	printf(__VA_ARGS__); printf("\n"); fflush(stdout); \
} while (0)

static inline int
tap_done(void)
{
	printf("1..%d\n", tap_n);
	if (tap_failed)
		printf("# %d of %d failed\n", tap_failed, tap_n);
	return tap_failed ? 1 : 0;
}

#endif
