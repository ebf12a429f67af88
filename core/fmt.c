/*
 * fmt — printf-free number formatting (see fmt.h). The fast paths build the
 * digits from an integer: v scaled by a power of ten and rounded as printf
 * rounds v's exact decimal value (see scale_round), so the text is the
 * same as printf's.
 */
#include "fmt.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* round(a * 10^d) as printf rounds the exact decimal value of a: the
 * product's rounding error, exact from fma, settles a product that came
 * out as an exact half (where the error decides which way the true value
 * lies); a true tie rounds to even, as printf does. a >= 0, the product
 * below 2^52. */
static double
scale_round(double a, double p10)
{
	double p = a * p10;
	double r = nearbyint(p);
	if (fabs(p - r) == 0.5) {
		double err = fma(a, p10, -p);
		if (err > 0)
			r = floor(p) + 1;
		else if (err < 0)
			r = floor(p);
	}
	return r;
}

static const double pow10_tab[] = {
	1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
};

/* printf's own text for what the fast paths leave to it; cut to the
 * buffer (only a %f of a value past 1e38 is that long). */
static size_t
fallback(char *out, const char *f, int decimals, double v)
{
	int n = snprintf(out, FMT_NUM_MAX, f, decimals, v);
	if (n < 0)
		return 0;
	return (size_t)n < FMT_NUM_MAX ? (size_t)n : FMT_NUM_MAX - 1;
}

size_t
fmt_u64(char *out, uint64_t v)
{
	char tmp[24];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	return n;
}

size_t
fmt_i64(char *out, int64_t v)
{
	if (v < 0) {
		out[0] = '-';
		return 1 + fmt_u64(out + 1, (uint64_t)0 - (uint64_t)v);
	}
	return fmt_u64(out, (uint64_t)v);
}

/* digits of v (< 10^width) zero-padded to width */
static size_t
put_padded(char *out, uint64_t v, int width)
{
	for (int i = width - 1; i >= 0; i--) {
		out[i] = (char)('0' + v % 10);
		v /= 10;
	}
	return (size_t)width;
}

size_t
fmt_fixed(char *out, double v, int decimals)
{
	if (decimals < 0 || decimals > 6 || !isfinite(v) || fabs(v) >= 1e9)
		return fallback(out, "%.*f", decimals < 0 ? 0 : decimals, v);
	double scaled = scale_round(fabs(v), pow10_tab[decimals]);
	uint64_t s = (uint64_t)scaled;
	size_t n = 0;
	if (signbit(v))
		out[n++] = '-';      /* as printf: "-0.000" for -0.0 and small negatives */
	uint64_t unit = (uint64_t)pow10_tab[decimals];
	n += fmt_u64(out + n, s / unit);
	if (decimals > 0) {
		out[n++] = '.';
		n += put_padded(out + n, s % unit, decimals);
	}
	return n;
}

size_t
fmt_g6(char *out, double v)
{
	if (v == 0) {
		if (signbit(v)) {
			memcpy(out, "-0", 2);
			return 2;
		}
		out[0] = '0';
		return 1;
	}
	double a = fabs(v);
	/* %.6g is fixed notation for 1e-4 <= |v| < 999999.5 (after rounding to
	 * six significant digits); elsewhere it has an exponent: printf's. */
	if (!isfinite(v) || a < 1e-4 || a >= 999999.5)
		return fallback(out, "%.*g", 6, v);
	static const double bound[] = { 1e-4, 1e-3, 1e-2, 1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5 };
	int k = 9;                       /* bound[k] <= a, i.e. 10^(k-4) <= a */
	while (k > 0 && a < bound[k])
		k--;
	int decimals = 9 - k;            /* six significant digits: 0..9 decimals */
	double scaled = scale_round(a, pow10_tab[decimals]);
	if (scaled >= 1e6) {             /* rounded up to the next power of ten */
		decimals--;
		scaled = scale_round(a, pow10_tab[decimals]);
	}
	uint64_t s = (uint64_t)scaled;
	size_t n = 0;
	if (v < 0)
		out[n++] = '-';
	uint64_t unit = (uint64_t)pow10_tab[decimals];
	n += fmt_u64(out + n, s / unit);
	uint64_t frac = s % unit;
	if (decimals > 0 && frac) {
		/* %g drops trailing zeros (and the point with them) */
		int width = decimals;
		while (frac % 10 == 0) {
			frac /= 10;
			width--;
		}
		out[n++] = '.';
		n += put_padded(out + n, frac, width);
	}
	return n;
}

size_t
fmt_hex_id(char *out, unsigned a, unsigned long long b)
{
	static const char hex[] = "0123456789abcdef";
	if (a > 0xffffffffu || b > 0xffffffffull)
		return (size_t)snprintf(out, FMT_NUM_MAX, "%08x%08llx", a, b);
	for (int i = 7; i >= 0; i--, a >>= 4)
		out[i] = hex[a & 15];
	for (int i = 15; i >= 8; i--, b >>= 4)
		out[i] = hex[b & 15];
	return 16;
}
