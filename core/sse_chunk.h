/*
 * sse_chunk — the fields rapport reads from one streamed chat-completion
 * chunk ("choices"[0] "delta" content/refusal, "finish_reason", "model"),
 * decoded with lua-cjson in a private Lua state. An upstream streams one
 * chunk per token (~270 bytes each, ~100-400 per reply); the cold path's
 * profile had jansson's full document at ~52,000 instructions a chunk,
 * half the upstream exchange's CPU; cjson's table is ~3x cheaper.
 *
 * Only plain chunks take this path: one that carries "error" or "usage",
 * is not valid UTF-8, or that cjson cannot decode is left to the caller's
 * jansson path (sse_chunk_decode returns false), so every refusal and
 * error message stays what it was. Owns the Lua state; the strings of a
 * decoded chunk stay valid until the next decode or sse_chunk_release().
 */
#ifndef RAPPORT_SSE_CHUNK_H
#define RAPPORT_SSE_CHUNK_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sse_chunk_decoder sse_chunk_decoder;

struct sse_chunk {
	const char *model;           /* NULL when absent or not a string */
	const char *content;         /* NULL when absent or not a string */
	size_t content_len;
	const char *refusal;
	size_t refusal_len;
	const char *finish_reason;
};

sse_chunk_decoder *sse_chunk_decoder_create(void);   /* NULL: out of memory */
void sse_chunk_decoder_destroy(sse_chunk_decoder *d);
/* True with *out filled for a plain chunk (a JSON object without "error"
 * or "usage" members other than null); false: use the full path. */
bool sse_chunk_decode(sse_chunk_decoder *d, const char *data, size_t len, struct sse_chunk *out);
void sse_chunk_release(sse_chunk_decoder *d);

#endif
