/* The few string and memory routines a freestanding program needs.
 *
 * gcc may emit calls to memset/memcpy/memmove/memcmp on its own (struct
 * copies, zero-initialisation), so those four keep their standard names.
 */
#ifndef GUEST_STR_H
#define GUEST_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void *memset(void *dst, int value, size_t len);
void *memcpy(void *restrict dst, const void *restrict src, size_t len);
void *memmove(void *dst, const void *src, size_t len);
int memcmp(const void *a, const void *b, size_t len);

size_t str_len(const char *s);
bool str_eq(const char *a, const char *b);
/* Copies at most size - 1 bytes and always terminates (size > 0). */
void str_copy(char *dst, const char *src, size_t size);

/* Little-endian loads from byte buffers that need not be aligned
 * (ACPI tables are packed). */
static inline uint16_t load_le16(const void *p)
{
	uint16_t v;

	__builtin_memcpy(&v, p, sizeof(v));
	return v;
}

static inline uint32_t load_le32(const void *p)
{
	uint32_t v;

	__builtin_memcpy(&v, p, sizeof(v));
	return v;
}

static inline uint64_t load_le64(const void *p)
{
	uint64_t v;

	__builtin_memcpy(&v, p, sizeof(v));
	return v;
}

#endif
