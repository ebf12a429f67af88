/*
 * jschema — a small JSON Schema validator for the subset OpenAI's strict
 * structured outputs accept, on jansson values.
 *
 * Two uses. When a script is loaded, jschema_check_strict() makes sure its
 * `schema` is one OpenAI will take with "strict": true, so a bad script
 * fails at load with a clear message instead of a 400 at request time. When
 * a reply comes back, jschema_validate() checks it before it is ever served
 * or cached; its message names the first problem with a path into the reply
 * and is phrased so it can go back to the model in a repair attempt:
 *
 *   $.tips[2].channel: "fax" is not one of "email", "call", "meeting", ...
 *   $.score: expected integer, got string
 *   $: missing required property "trend"
 *
 * Validated keywords: type, properties, required, additionalProperties,
 * items, enum, const, minimum, maximum, exclusiveMinimum, exclusiveMaximum,
 * multipleOf, minItems, maxItems, minLength, maxLength (code points), anyOf
 * and local $ref ("#", "#/$defs/<name>", "#/definitions/<name>", any local
 * JSON pointer), plus the boolean schemas true and false. Everything else
 * (description, title, pattern, format, unknown keywords) is ignored.
 * Numbers compare by value: 3.0 is an integer and equals 3 in enum/const.
 * Schema and value nesting is limited to JSCHEMA_MAX_DEPTH: deeper input is
 * an error, never a stack overflow. The work per call is limited too, to
 * JSCHEMA_MAX_WORK schema nodes visited: anyOf branches that $ref back into
 * each other could otherwise cost 2^64 steps. A model reply within
 * max_tokens needs a few thousand at most.
 *
 * Neither function keeps state or allocates beyond short-lived message
 * formatting; both are safe to call from any thread on shared schemas.
 */
#ifndef RAPPORT_JSCHEMA_H
#define RAPPORT_JSCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

#define JSCHEMA_MAX_DEPTH 64
#define JSCHEMA_MAX_WORK  100000

/* True when value satisfies schema. Otherwise false, and err (when not NULL)
 * holds the first problem as "<path>: <what is wrong>", the path starting
 * at "$" ("$.tips[2].channel"). A schema that is itself broken (unknown
 * type name, unresolvable $ref) also fails, with "schema error" in err. */
bool jschema_validate(const json_t *schema, const json_t *value, char *err, size_t errlen);

/* True when schema obeys OpenAI's strict mode: the root is an object schema
 * ("type": "object", not anyOf); every object schema has
 * "additionalProperties": false and lists every property in "required";
 * arrays have "items"; every $ref resolves; keyword values have the right
 * shape; and only these keywords appear: type properties required
 * additionalProperties items enum const anyOf $ref $defs definitions
 * description title minimum maximum exclusiveMinimum exclusiveMaximum
 * multipleOf minItems maxItems minLength maxLength pattern format.
 * Otherwise false, with "<JSON pointer into the schema>: <problem>" in err
 * ("#/properties/tips/items: ..."). */
bool jschema_check_strict(const json_t *schema, char *err, size_t errlen);

#endif
