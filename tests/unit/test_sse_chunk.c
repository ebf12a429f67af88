/*
 * test_sse_chunk — the cjson path for streamed chunks gives the fields the
 * jansson path would (content, refusal, finish_reason, model, escapes and
 * UTF-8 intact), and leaves to the jansson path every chunk whose handling
 * must stay jansson's: an error or usage member, not an object, bytes that
 * are not UTF-8, \u0000 or surrogate escapes, JSON cjson cannot decode,
 * hex or NaN numbers.
 */
#include "sse_chunk.h"
#include "tap.h"

#include <string.h>

static bool
dec(sse_chunk_decoder *d, const char *s, struct sse_chunk *c)
{
	return sse_chunk_decode(d, s, strlen(s), c);
}

int
main(void)
{
	sse_chunk_decoder *d = sse_chunk_decoder_create();
	ok(d != NULL, "decoder made");
	struct sse_chunk c;

	ok(dec(d, "{\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\","
	          "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"h\\u00e9\\\"llo\\n\"},"
	          "\"logprobs\":null,\"finish_reason\":null}]}", &c) &&
	   c.content && c.content_len == 8 && memcmp(c.content, "h\xc3\xa9\"llo\n", 8) == 0 &&
	   c.model && strcmp(c.model, "gpt-4o-mini") == 0 && !c.finish_reason && !c.refusal,
	   "a plain chunk: content unescaped, model, no finish_reason (null)");
	sse_chunk_release(d);

	ok(dec(d, "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}", &c) &&
	   !c.content && c.finish_reason && strcmp(c.finish_reason, "stop") == 0 && !c.model,
	   "the last chunk: finish_reason, no content");
	ok(dec(d, "{\"choices\":[{\"delta\":{\"refusal\":\"no\"}}]}", &c) && c.refusal &&
	   c.refusal_len == 2 && !c.content, "a refusal delta");
	ok(dec(d, "  {\"choices\":[],\"usage\":null}", &c) && !c.content,
	   "usage null and no choices: plain, nothing to take");
	ok(dec(d, "{\"choices\":[{\"delta\":{\"content\":\"\xf0\x9f\x98\x80\"}}]}", &c) &&
	   c.content_len == 4, "raw UTF-8 (an emoji) passes as is");
	ok(dec(d, "{\"choices\":[{\"delta\":{\"content\":5}}]}", &c) && !c.content,
	   "content that is not a string is none, as json_is_string says");
	ok(dec(d, "{\"choices\":{\"0\":{\"delta\":{\"content\":\"x\"}}}}", &c) && !c.content,
	   "choices as an object has no element 0, as json_array_get says");

	const char *full_path[] = {
		"{\"error\":{\"message\":\"boom\"}}",
		"{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}",
		"[1,2]",
		"[]",
		"\"text\"",
		"{\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}",
		"{\"choices\":[{\"delta\":{\"content\":\"a\\u0000b\"}}]}",
		"{\"choices\":[{\"delta\":{\"content\":\"\\ud83d\\ude00\"}}]}",
		"{\"choices\":[{\"delta\":{\"content\":\"\\uDC00\"}}]}",
		"{\"choices\":[{\"delta\":{\"content\":\"x\"}}]",
		"{\"created\":0x10}",
		"{\"created\":NaN}",
		"",
	};
	int wrong = 0;
	for (size_t i = 0; i < sizeof full_path / sizeof *full_path; i++)
		if (dec(d, full_path[i], &c)) {
			wrong++;
			printf("# took the cjson path: %s\n", full_path[i]);
		}
	ok(wrong == 0, "error, usage, non-objects, bad UTF-8, \\u0000, surrogates, bad JSON, hex/NaN: "
	   "left to jansson");

	long sum = 0;
	for (int i = 0; i < 20000; i++) {
		dec(d, "{\"choices\":[{\"delta\":{\"content\":\"0123456789\"}}]}", &c);
		sum += (long)c.content_len;
		sse_chunk_release(d);
	}
	ok(sum == 200000, "20,000 chunks in a row (the state's garbage is collected as it goes)");
	sse_chunk_decoder_destroy(d);
	sse_chunk_decoder_destroy(NULL);
	return tap_done();
}
