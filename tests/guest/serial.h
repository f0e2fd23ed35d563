/* COM1 output: the only channel from the guest to the test that runs it. */
#ifndef GUEST_SERIAL_H
#define GUEST_SERIAL_H

void serial_init(void);
void serial_putc(char c);
void serial_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
