/* printf-style formatting for the guest's output and failure reasons.
 *
 * Supported: %% %c %s %d %i %u %x %X %p; flags '0' and '-'; a field width;
 * a precision for %s (".N" or ".*", for fixed-size fields such as ACPI
 * signatures); length modifiers l, ll and z. No floating point.
 */
#ifndef GUEST_FORMAT_H
#define GUEST_FORMAT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*format_sink)(char c, void *ctx);

void format_v(format_sink sink, void *ctx, const char *fmt, va_list args);

/* Formats into buf (always terminated when size > 0), truncating if needed;
 * returns the length written, not counting the terminator. */
size_t format_buf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Formats a failure reason into one shared buffer and returns it. The text
 * stays valid until the next call, which is enough for a reason that is
 * handed straight up to the caller that reports it. */
const char *reasonf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parses a whole string as an unsigned number: decimal, or hex with a 0x
 * prefix. Returns false on an empty string, a stray character or overflow. */
bool parse_u64(const char *s, uint64_t *out);

#endif
