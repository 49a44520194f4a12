/* The HAL on QEMU's mps2-an385 (Cortex-M3, AN385 FPGA image): vector table
 * and reset handler, CMSDK APB UARTs (UART0 console, UART1 modem with SLIP
 * framing), SysTick as the clock, WFI as sleep, SYSRESETREQ as reset. */
#include <string.h>

#include "hal.h"
#include "proto.h"

#define REG(a) (*(volatile uint32_t *)(a))
#ifndef CONSOLE_UART
#define CONSOLE_UART 0x40004000u
#endif
#ifndef MODEM_UART
#define MODEM_UART 0x40005000u
#endif
#ifndef MODEM_IRQ
#define MODEM_IRQ 2 /* UART1 RX on the AN385 */
#endif
#ifndef CONSOLE_IRQ
#define CONSOLE_IRQ 0 /* UART0 RX */
#endif
#define UART_DATA 0x00
#define UART_STATE 0x04
#define UART_CTRL 0x08
#define UART_INT 0x0C
#define UART_BAUDDIV 0x10
#define STATE_TXFULL 1u
#define STATE_RXFULL 2u
#define CTRL_TXEN 1u
#define CTRL_RXEN 2u
#define CTRL_RXINT 8u

#define SYST_CSR 0xE000E010u
#define SYST_RVR 0xE000E014u
#define SYST_CVR 0xE000E018u
#define NVIC_ISER 0xE000E100u
#define SCB_AIRCR 0xE000ED0Cu
#define SYSCLK_HZ 25000000u
#define TICK_MS 10u

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern uint8_t _snoinit, _enoinit;
extern const provision_t _provision;

static volatile uint32_t ticks;

/* Receive rings filled by the UART RX interrupts: QEMU's CMSDK UART holds
 * one byte, so a busy firmware must not leave it full. */
typedef struct {
    volatile uint8_t buf[8192];
    volatile uint32_t head, tail;
} ring_t;
static ring_t modem_rx, console_rx;

static void ring_irq(ring_t *r, uint32_t uart) {
    /* Clear first, then drain: a byte that lands after the drain sets the
     * interrupt again. (Clearing after the drain can lose that interrupt
     * and, the UART holding one byte, stall reception for good.) */
    REG(uart + UART_INT) = 2u;
    while (REG(uart + UART_STATE) & STATE_RXFULL) {
        uint8_t c = (uint8_t)REG(uart + UART_DATA);
        uint32_t next = (r->head + 1) % sizeof r->buf;
        if (next != r->tail) {
            r->buf[r->head] = c;
            r->head = next;
        }
    }
}

/* Drains a UART from thread context too, with interrupts masked. */
static void ring_poll(ring_t *r, uint32_t uart) {
    __asm volatile("cpsid i");
    ring_irq(r, uart);
    __asm volatile("cpsie i");
}

static int ring_get(ring_t *r) {
    if (r->tail == r->head) return -1;
    uint8_t c = r->buf[r->tail];
    r->tail = (r->tail + 1) % sizeof r->buf;
    return c;
}

void SysTick_Handler(void) { ticks++; }
void ModemRx_Handler(void) { ring_irq(&modem_rx, MODEM_UART); }
void ConsoleRx_Handler(void) { ring_irq(&console_rx, CONSOLE_UART); }

static void uart_init(uint32_t base) {
    REG(base + UART_BAUDDIV) = SYSCLK_HZ / 115200u;
    REG(base + UART_CTRL) = CTRL_TXEN | CTRL_RXEN | CTRL_RXINT;
}

static void uart_putc(uint32_t base, uint8_t c) {
    while (REG(base + UART_STATE) & STATE_TXFULL) {
    }
    REG(base + UART_DATA) = c;
}

uint32_t hal_now_ms(void) { return ticks * TICK_MS; }

void hal_sleep_until(uint32_t until_ms) {
    while ((int32_t)(hal_now_ms() - until_ms) < 0) __asm volatile("wfi");
}

void hal_console_write(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) uart_putc(CONSOLE_UART, (uint8_t)s[i]);
}

int hal_console_line(char *buf, size_t cap) {
    static char line[64];
    static size_t len;
    int c;
    ring_poll(&console_rx, CONSOLE_UART);
    while ((c = ring_get(&console_rx)) >= 0) {
        if (c == '\r' || c == '\n') {
            if (len == 0) continue;
            size_t n = len < cap - 1 ? len : cap - 1;
            memcpy(buf, line, n);
            buf[n] = 0;
            len = 0;
            return 1;
        }
        if (len < sizeof line) line[len++] = (char)c;
    }
    return 0;
}

void hal_net_send(const uint8_t *d, size_t n) {
    uart_putc(MODEM_UART, SLIP_END);
    for (size_t i = 0; i < n; i++) {
        if (d[i] == SLIP_END) {
            uart_putc(MODEM_UART, SLIP_ESC);
            uart_putc(MODEM_UART, SLIP_ESC_END);
        } else if (d[i] == SLIP_ESC) {
            uart_putc(MODEM_UART, SLIP_ESC);
            uart_putc(MODEM_UART, SLIP_ESC_ESC);
        } else {
            uart_putc(MODEM_UART, d[i]);
        }
    }
    uart_putc(MODEM_UART, SLIP_END);
}

static slip_rx slip;

size_t hal_net_recv(uint8_t *buf, size_t cap, uint32_t until_ms) {
    for (;;) {
        int c;
        ring_poll(&modem_rx, MODEM_UART);
        while ((c = ring_get(&modem_rx)) >= 0) {
            size_t n = slip_feed(&slip, (uint8_t)c);
            if (n && n <= cap) {
                memcpy(buf, slip.buf, n);
                return n;
            }
        }
        if ((int32_t)(hal_now_ms() - until_ms) >= 0) return 0;
        __asm volatile("wfi"); /* a byte or a tick wakes us */
    }
}

void hal_net_drain(void) {
    while (ring_get(&modem_rx) >= 0) {
    }
    slip.len = 0;
    slip.esc = 0;
    slip.overflow = 0;
}

void hal_system_reset(void) {
    __asm volatile("dsb");
    REG(SCB_AIRCR) = (0x5FAu << 16) | (1u << 2); /* VECTKEY | SYSRESETREQ */
    for (;;) __asm volatile("wfi");
}

const provision_t *hal_provision(void) { return &_provision; }

void *hal_retained(size_t size) {
    if ((size_t)(&_enoinit - &_snoinit) < size) return 0;
    return &_snoinit;
}

void Reset_Handler(void) {
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss; dst++) *dst = 0;
    uart_init(CONSOLE_UART);
    uart_init(MODEM_UART);
    REG(SYST_RVR) = SYSCLK_HZ / 1000u * TICK_MS - 1u;
    REG(SYST_CVR) = 0;
    REG(SYST_CSR) = 7u; /* processor clock, interrupt, enable */
    REG(NVIC_ISER) = (1u << MODEM_IRQ) | (1u << CONSOLE_IRQ);
    __asm volatile("cpsie i");
    app_main();
    for (;;) __asm volatile("wfi");
}

static void Default_Handler(void) {
    /* A fault: reset the way a watchdog would, retained RAM intact. */
    hal_system_reset();
}

void NMI_Handler(void) __attribute__((weak, alias("Default_Handler")));
void HardFault_Handler(void) __attribute__((weak, alias("Default_Handler")));

__attribute__((section(".vectors"), used)) static void (*const vectors[16 + 32])(void) = {
    [0] = (void (*)(void))&_estack,
    [1] = Reset_Handler,
    [2] = NMI_Handler,
    [3] = HardFault_Handler,
    [4] = Default_Handler,
    [5] = Default_Handler,
    [6] = Default_Handler,
    [11] = Default_Handler,
    [14] = Default_Handler,
    [15] = SysTick_Handler,
    [16 + CONSOLE_IRQ] = ConsoleRx_Handler,
    [16 + MODEM_IRQ] = ModemRx_Handler,
};

/* newlib's snprintf needs these; there is no heap and no file system. */
void *_sbrk(int incr) {
    (void)incr;
    return (void *)-1;
}
