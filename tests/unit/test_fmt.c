/*
 * test_fmt — fmt.c's printf-free conversions give exactly the text of the
 * printf conversion they replace (%.6g, %.0f, %.3f, %lld, %08x%08llx), for
 * millions of values of the shapes the request paths format (timings,
 * ages, costs) and for the edges: halves, powers of ten, zeros, signs,
 * values past each fast path's range.
 */
#include "fmt.h"
#include "tap.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long mismatches;
static char first_bad[160];

static void
check(const char *conv, size_t (*f)(char *, double, int), double v, int arg)
{
	char a[FMT_NUM_MAX + 1], b[64];
	size_t n = f(a, v, arg);
	a[n] = '\0';
	if (strcmp(conv, "g") == 0)
		snprintf(b, sizeof b, "%.6g", v);
	else
		snprintf(b, sizeof b, "%.*f", arg, v);
	if (strcmp(a, b) != 0 && mismatches++ == 0)
		snprintf(first_bad, sizeof first_bad, "%s(%.17g, %d): \"%s\", printf \"%s\"",
		         conv, v, arg, a, b);
}

static size_t g6(char *out, double v, int unused) { (void)unused; return fmt_g6(out, v); }

static void
all(double v)
{
	check("g", g6, v, 0);
	check("f", fmt_fixed, v, 0);
	check("f", fmt_fixed, v, 3);
	check("f", fmt_fixed, v, 6);
}

int
main(void)
{
	uint64_t x = 88172645463325252ull;       /* xorshift: the same values every run */
	for (long i = 0; i < 2000000; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		double u = (double)(x >> 11) / 9007199254740992.0;
		switch (i % 5) {
		case 0: all((double)(x % 2000000) / 1000.0); break;      /* ms with 3 decimals, halves included */
		case 1: all(exp(u * 46 - 23)); break;                    /* 1e-10 .. 1e10 */
		case 2: all((double)(x % 100000000)); break;             /* whole ms */
		case 3: all(-u * 1000); break;
		default: all((double)(x % 1000000) / 1e6); break;        /* costs */
		}
	}
	const double edge[] = { 0, -0.0, 1e-4, 9.99995e-5, 0.0001000005, 0.1, 0.5, 1.5, 2.5,
	                        0.0005, 0.0015, 9.999995, 99999.95, 999999.4, 999999.5, 1e6,
	                        123456789, 1e9, 1e20, -1e-300, NAN, INFINITY, -INFINITY };
	for (size_t i = 0; i < sizeof edge / sizeof *edge; i++)
		all(edge[i]);
	ok(mismatches == 0, "%%.6g, %%.0f, %%.3f, %%.6f as printf: %ld mismatches %s", mismatches,
	   first_bad);

	char a[FMT_NUM_MAX + 1], b[64];
	long bad = 0;
	const int64_t ints[] = { 0, 1, -1, 9, 10, 123456789, -987654321, INT64_MAX, INT64_MIN };
	for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
		a[fmt_i64(a, ints[i])] = '\0';
		snprintf(b, sizeof b, "%lld", (long long)ints[i]);
		bad += strcmp(a, b) != 0;
	}
	ok(bad == 0, "fmt_i64 as %%lld, INT64_MIN included");

	bad = 0;
	const unsigned salts[] = { 0, 1, 0xdeadbeef, 0xffffffff };
	const unsigned long long ids[] = { 0, 1, 0x12345678, 0xffffffffull, 0x100000000ull };
	for (size_t i = 0; i < 4; i++)
		for (size_t j = 0; j < 5; j++) {
			a[fmt_hex_id(a, salts[i], ids[j])] = '\0';
			snprintf(b, sizeof b, "%08x%08llx", salts[i], ids[j]);
			bad += strcmp(a, b) != 0;
		}
	ok(bad == 0, "fmt_hex_id as %%08x%%08llx, past 32 bits too");
	return tap_done();
}
