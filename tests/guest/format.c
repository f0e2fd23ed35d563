#include "format.h"

#include "str.h"

struct spec {
	bool zero_pad;
	bool left_align;
	unsigned width;
	int precision; /* -1: none */
	int length;    /* number of 'l's; 'z' counts as 1 */
};

static void emit_padding(format_sink sink, void *ctx, char pad, unsigned count)
{
	while (count--)
		sink(pad, ctx);
}

static void emit_text(format_sink sink, void *ctx, const struct spec *spec,
		      const char *text, size_t len)
{
	unsigned pad = spec->width > len ? spec->width - (unsigned)len : 0;

	if (!spec->left_align)
		emit_padding(sink, ctx, spec->zero_pad ? '0' : ' ', pad);
	for (size_t i = 0; i < len; i++)
		sink(text[i], ctx);
	if (spec->left_align)
		emit_padding(sink, ctx, ' ', pad);
}

static void emit_number(format_sink sink, void *ctx, const struct spec *spec,
			uint64_t value, bool negative, unsigned base, bool upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char buf[24];
	size_t pos = sizeof(buf);

	do {
		buf[--pos] = digits[value % base];
		value /= base;
	} while (value);

	if (negative) {
		if (spec->zero_pad && !spec->left_align) {
			/* The sign goes before the zeros: -0042, not 00-42. */
			struct spec rest = *spec;

			sink('-', ctx);
			rest.width = spec->width ? spec->width - 1 : 0;
			emit_text(sink, ctx, &rest, buf + pos, sizeof(buf) - pos);
			return;
		}
		buf[--pos] = '-';
	}
	emit_text(sink, ctx, spec, buf + pos, sizeof(buf) - pos);
}

static const char *parse_spec(const char *fmt, struct spec *spec, va_list *args)
{
	*spec = (struct spec){ .precision = -1 };

	for (;; fmt++) {
		if (*fmt == '0')
			spec->zero_pad = true;
		else if (*fmt == '-')
			spec->left_align = true;
		else
			break;
	}
	while (*fmt >= '0' && *fmt <= '9')
		spec->width = spec->width * 10 + (unsigned)(*fmt++ - '0');
	if (*fmt == '.') {
		fmt++;
		if (*fmt == '*') {
			int p = va_arg(*args, int);

			spec->precision = p < 0 ? -1 : p;
			fmt++;
		} else {
			spec->precision = 0;
			while (*fmt >= '0' && *fmt <= '9')
				spec->precision = spec->precision * 10 + (*fmt++ - '0');
		}
	}
	/* long and size_t are both 64 bits here, so 'z' reads like 'l'. */
	while (*fmt == 'l' || *fmt == 'z') {
		spec->length++;
		fmt++;
	}
	return fmt;
}

static uint64_t fetch_unsigned(const struct spec *spec, va_list *args)
{
	if (spec->length >= 1)
		return va_arg(*args, unsigned long);
	return va_arg(*args, unsigned int);
}

static int64_t fetch_signed(const struct spec *spec, va_list *args)
{
	if (spec->length >= 1)
		return va_arg(*args, long);
	return va_arg(*args, int);
}

void format_v(format_sink sink, void *ctx, const char *fmt, va_list args)
{
	va_list ap;

	/* Helpers take a pointer to the list; a copy keeps that portable. */
	va_copy(ap, args);
	while (*fmt) {
		struct spec spec;

		if (*fmt != '%') {
			sink(*fmt++, ctx);
			continue;
		}
		fmt = parse_spec(fmt + 1, &spec, &ap);
		switch (*fmt) {
		case 'c': {
			char c = (char)va_arg(ap, int);

			emit_text(sink, ctx, &spec, &c, 1);
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			size_t len = 0;

			if (!s)
				s = "(null)";
			while (s[len] && (spec.precision < 0 || len < (size_t)spec.precision))
				len++;
			emit_text(sink, ctx, &spec, s, len);
			break;
		}
		case 'd':
		case 'i': {
			int64_t v = fetch_signed(&spec, &ap);
			uint64_t magnitude = v < 0 ? -(uint64_t)v : (uint64_t)v;

			emit_number(sink, ctx, &spec, magnitude, v < 0, 10, false);
			break;
		}
		case 'u':
			emit_number(sink, ctx, &spec, fetch_unsigned(&spec, &ap), false, 10, false);
			break;
		case 'x':
		case 'X':
			emit_number(sink, ctx, &spec, fetch_unsigned(&spec, &ap), false, 16,
				    *fmt == 'X');
			break;
		case 'p':
			sink('0', ctx);
			sink('x', ctx);
			emit_number(sink, ctx, &spec, (uintptr_t)va_arg(ap, void *), false, 16, false);
			break;
		case '%':
			sink('%', ctx);
			break;
		case '\0':
			/* A lone '%' at the end: print it rather than read past the string. */
			sink('%', ctx);
			va_end(ap);
			return;
		default:
			/* Unknown conversion: show it verbatim so the mistake is visible. */
			sink('%', ctx);
			sink(*fmt, ctx);
			break;
		}
		fmt++;
	}
	va_end(ap);
}

struct buf_sink {
	char *buf;
	size_t size;
	size_t len;
};

static void buf_put(char c, void *ctx)
{
	struct buf_sink *b = ctx;

	if (b->len + 1 < b->size)
		b->buf[b->len++] = c;
}

static size_t format_buf_v(char *buf, size_t size, const char *fmt, va_list args)
{
	struct buf_sink b = { .buf = buf, .size = size, .len = 0 };

	if (!size)
		return 0;
	format_v(buf_put, &b, fmt, args);
	buf[b.len] = '\0';
	return b.len;
}

size_t format_buf(char *buf, size_t size, const char *fmt, ...)
{
	va_list args;
	size_t len;

	va_start(args, fmt);
	len = format_buf_v(buf, size, fmt, args);
	va_end(args);
	return len;
}

const char *reasonf(const char *fmt, ...)
{
	static char reason[160];
	va_list args;

	va_start(args, fmt);
	format_buf_v(reason, sizeof(reason), fmt, args);
	va_end(args);
	return reason;
}

bool parse_u64(const char *s, uint64_t *out)
{
	unsigned base = 10;
	uint64_t value = 0;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned digit;

		if (*s >= '0' && *s <= '9')
			digit = (unsigned)(*s - '0');
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			digit = (unsigned)(*s - 'a' + 10);
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			digit = (unsigned)(*s - 'A' + 10);
		else
			return false;
		if (value > (UINT64_MAX - digit) / base)
			return false;
		value = value * base + digit;
	}
	*out = value;
	return true;
}
