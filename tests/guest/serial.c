#include "serial.h"

#include <stdarg.h>

#include "format.h"
#include "io.h"

#define COM1 0x3F8

/* 16550 register offsets from the base port. */
#define UART_THR 0 /* transmit holding (write) */
#define UART_IER 1 /* interrupt enable */
#define UART_FCR 2 /* FIFO control (write) */
#define UART_LCR 3 /* line control */
#define UART_MCR 4 /* modem control */
#define UART_LSR 5 /* line status */
#define UART_DLL 0 /* divisor latch low, with LCR.DLAB set */
#define UART_DLM 1 /* divisor latch high, with LCR.DLAB set */

#define LCR_8N1 0x03
#define LCR_DLAB 0x80
#define FCR_ENABLE_AND_CLEAR 0x07
#define MCR_DTR_RTS 0x03 /* OUT2 stays clear: no interrupt line to the PIC */
#define LSR_THR_EMPTY 0x20

/* An emulated UART reports THR empty at once; the bound only guards against a
 * missing or broken one, where output is lost instead of the guest hanging. */
#define THR_POLL_LIMIT 100000

void serial_init(void)
{
	outb(COM1 + UART_IER, 0x00);
	outb(COM1 + UART_LCR, LCR_DLAB);
	outb(COM1 + UART_DLL, 0x01); /* divisor 1: 115200 baud */
	outb(COM1 + UART_DLM, 0x00);
	outb(COM1 + UART_LCR, LCR_8N1);
	outb(COM1 + UART_FCR, FCR_ENABLE_AND_CLEAR);
	outb(COM1 + UART_MCR, MCR_DTR_RTS);
}

/* Lines end in a bare '\n' so that tests can match whole lines exactly. */
void serial_putc(char c)
{
	for (int i = 0; i < THR_POLL_LIMIT; i++) {
		if (inb(COM1 + UART_LSR) & LSR_THR_EMPTY)
			break;
		cpu_relax();
	}
	outb(COM1 + UART_THR, (uint8_t)c);
}

static void serial_sink(char c, void *ctx)
{
	(void)ctx;
	serial_putc(c);
}

void serial_printf(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	format_v(serial_sink, 0, fmt, args);
	va_end(args);
}
