/*
 * fmt — number formatting for the per-request paths (the request log line,
 * a cached hit's reply suffix and headers), without printf: the profile of
 * a cached hit showed a third of its instructions in vsnprintf/printf_fp.
 * Each writes into out (no NUL unless said) and returns the length; out
 * must hold FMT_NUM_MAX bytes. Owns nothing.
 *
 * The text is what the printf conversion named gives (tests/unit/test_fmt.c
 * compares millions of values); outside the ranges each handles itself
 * (see fmt.c) they call snprintf.
 */
#ifndef RAPPORT_FMT_H
#define RAPPORT_FMT_H

#include <stddef.h>
#include <stdint.h>

#define FMT_NUM_MAX 40

/* "%llu" / "%lld" */
size_t fmt_u64(char *out, uint64_t v);
size_t fmt_i64(char *out, int64_t v);
/* "%.<decimals>f", decimals 0..6 */
size_t fmt_fixed(char *out, double v, int decimals);
/* "%.6g" */
size_t fmt_g6(char *out, double v);
/* "%08x%08llx" of (a, b): 16 lowercase hex digits when each fits */
size_t fmt_hex_id(char *out, unsigned a, unsigned long long b);

#endif
