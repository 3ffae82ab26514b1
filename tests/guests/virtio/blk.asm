; blk - the project's virtio-blk test guest: a vmlinux-shaped ELF booted with --kernel, entered in
; long mode with the first GiB identity-mapped. It maps the MMIO hole, finds the virtio-mmio
; device in slot 0 (magic, version, device id), negotiates features, sets up queue 0 the way its
; version wants (v2: three ring addresses and QueueReady; v1: GuestPageSize, QueueAlign and one
; QueuePFN), then reads sector 1, writes sector 2, flushes, asks for the device id, sends two
; requests the device must refuse, breaks the protocol once on purpose (notify of a queue that
; does not exist: NEEDS_RESET) and resets the device. Each step is one line on COM1; the
; test (tests/test_virtio_guest.py) checks the lines and the image file.
%include "lib.inc"
%include "kreport.inc"
%include "elf.inc"
%define PHYS 0x100000

%define MMIO        0xD0000000      ; virtio-mmio slot 0 (emu/layout.py VIRTIO_MMIO_BASE)
%define BOOT_PDPT   0xA000          ; the loader's page tables: PDPT entry 3 maps 3-4 GiB
%define PD3         0x300000        ; our page directory for 3-4 GiB (2 MiB pages, uncached)
%define RING        0x400000        ; queue memory (16 KiB, zeroed)
%define DESC        RING
%define AVAIL_V2    0x402000        ; v2 puts each ring where it likes
%define USED_V2     0x403000
%define HDR         0x410000        ; request header (type, reserved, sector)
%define DATA        0x411000        ; one sector of data
%define STAT        0x412000        ; status byte
%define QSIZE       8
%define ZERO_PAGE   0x7000

%define R_MAGIC     0x000
%define R_VERSION   0x004
%define R_DEVICE    0x008
%define R_VENDOR    0x00C
%define R_DFEAT     0x010
%define R_DFEATSEL  0x014
%define R_GFEAT     0x020
%define R_GFEATSEL  0x024
%define R_PAGESIZE  0x028
%define R_QSEL      0x030
%define R_QNUMMAX   0x034
%define R_QNUM      0x038
%define R_QALIGN    0x03C
%define R_QPFN      0x040
%define R_QREADY    0x044
%define R_NOTIFY    0x050
%define R_ISR       0x060
%define R_ACK       0x064
%define R_STATUS    0x070
%define R_QDESC     0x080
%define R_QDRIVER   0x090
%define R_QDEVICE   0x0A0
%define R_CONFIG    0x100

%define T_IN        0
%define T_OUT       1
%define T_FLUSH     4
%define T_GET_ID    8

    bits 64
    org PHYS
ehdr:
    ELF64_EHDR start64, 1
    ELF64_PHDR PT_LOAD, 0, PHYS, PHYS, file_end - ehdr, file_end - ehdr

start64:
    SERIAL_INIT
    PRINT "virtio-blk guest", 10
    PRINT "cmdline="
    mov esi, [ZERO_PAGE + 0x228]    ; boot_params.hdr.cmd_line_ptr
    call kquoted64
    PRINT 10

    ; Map 3-4 GiB with 2 MiB pages, cache-disabled (P | RW | PWT | PCD | PS).
    mov rdi, PD3
    mov rax, 0xC0000000 | 0x9B
    mov ecx, 512
.map:
    mov [rdi], rax
    add rax, 0x200000
    add rdi, 8
    dec ecx
    jnz .map
    mov qword [BOOT_PDPT + 3 * 8], PD3 | 3
    mov rax, cr3
    mov cr3, rax

    ; Discover.
    mov ebx, MMIO
    mov r12d, [rbx + R_VERSION]
    PRINT "magic="
    HEX dword [rbx + R_MAGIC], 8
    PRINT " version="
    HEX r12d, 1
    PRINT " device="
    HEX dword [rbx + R_DEVICE], 2
    PRINT " vendor="
    HEX dword [rbx + R_VENDOR], 8
    PRINT 10
    cmp dword [rbx + R_MAGIC], 0x74726976
    jne fail
    cmp dword [rbx + R_DEVICE], 2
    jne fail

    ; Negotiate: reset, ACKNOWLEDGE, DRIVER, read both feature words, accept FLUSH (and
    ; VERSION_1 on a modern device, then FEATURES_OK, which must stick).
    mov dword [rbx + R_STATUS], 0
    mov dword [rbx + R_STATUS], 1
    mov dword [rbx + R_STATUS], 3
    mov dword [rbx + R_DFEATSEL], 0
    mov r13d, [rbx + R_DFEAT]
    mov dword [rbx + R_DFEATSEL], 1
    mov r14d, [rbx + R_DFEAT]
    PRINT "features="
    HEX r14d, 8
    HEX r13d, 8
    PRINT 10
    mov eax, r13d
    and eax, 1 << 9                 ; VIRTIO_BLK_F_FLUSH
    mov dword [rbx + R_GFEATSEL], 0
    mov [rbx + R_GFEAT], eax
    cmp r12d, 2
    jne .legacy_features
    mov dword [rbx + R_GFEATSEL], 1
    mov dword [rbx + R_GFEAT], 1    ; VIRTIO_F_VERSION_1
    mov dword [rbx + R_STATUS], 0xB ; + FEATURES_OK
    mov eax, [rbx + R_STATUS]
    PRINT "features_ok status="
    HEX eax, 2
    PRINT 10
    test eax, 8
    jz fail
    jmp .queue
.legacy_features:
    mov dword [rbx + R_PAGESIZE], 4096

.queue:
    mov rdi, RING                   ; zero the queue memory
    mov ecx, 0x4000 / 8
    xor eax, eax
.zero:
    mov [rdi], rax
    add rdi, 8
    dec ecx
    jnz .zero
    mov dword [rbx + R_QSEL], 0
    PRINT "queue0 max="
    HEX dword [rbx + R_QNUMMAX], 4
    mov dword [rbx + R_QNUM], QSIZE
    cmp r12d, 2
    jne .legacy_queue
    mov dword [rbx + R_QDESC], DESC
    mov dword [rbx + R_QDESC + 4], 0
    mov dword [rbx + R_QDRIVER], AVAIL_V2
    mov dword [rbx + R_QDRIVER + 4], 0
    mov dword [rbx + R_QDEVICE], USED_V2
    mov dword [rbx + R_QDEVICE + 4], 0
    mov dword [rbx + R_QREADY], 1
    mov qword [avail], AVAIL_V2
    mov qword [used], USED_V2
    PRINT " ready="
    HEX dword [rbx + R_QREADY], 1
    jmp .driver_ok
.legacy_queue:
    mov dword [rbx + R_QALIGN], 4096
    mov dword [rbx + R_QPFN], RING >> 12
    mov qword [avail], RING + 16 * QSIZE
    mov qword [used], RING + 0x1000 ; the used ring starts at the next QueueAlign boundary
    PRINT " pfn="
    HEX dword [rbx + R_QPFN], 8
.driver_ok:
    PRINT 10
    mov eax, [rbx + R_STATUS]
    or eax, 4                       ; DRIVER_OK
    mov [rbx + R_STATUS], eax
    PRINT "status="
    HEX dword [rbx + R_STATUS], 2
    PRINT " capacity="
    HEX dword [rbx + R_CONFIG + 4], 8
    HEX dword [rbx + R_CONFIG], 8
    PRINT 10

    ; Read sector 1: the host put a NUL-terminated line there.
    mov eax, T_IN
    mov edx, 1
    mov ecx, 2
    call blk_req
    PRINT "sector1="
    mov rsi, DATA
    call kquoted64
    mov rsi, DATA
    mov ecx, 512
    call ksum64
    PRINT " sum="
    HEX eax, 8
    PRINT 10

    ; Write sector 2: byte i = i ^ 0x5A, then a line over the start.
    mov rdi, DATA
    xor ecx, ecx
.fill:
    mov eax, ecx
    xor eax, 0x5A
    mov [rdi + rcx], al
    inc ecx
    cmp ecx, 512
    jne .fill
    mov rsi, written
.copy:
    mov al, [rsi]
    mov [rdi], al
    inc rsi
    inc rdi
    test al, al
    jnz .copy
    mov eax, T_OUT
    mov edx, 2
    mov ecx, 1
    call blk_req

    mov eax, T_FLUSH
    xor edx, edx
    xor ecx, ecx
    call blk_req

    mov rdi, DATA                   ; the id may fill all 20 bytes: keep a NUL after them
    mov qword [rdi + 16], 0
    mov qword [rdi + 24], 0
    mov eax, T_GET_ID
    xor edx, edx
    mov ecx, 2
    mov r8d, 20
    call blk_req
    PRINT "id="
    mov rsi, DATA
    call kquoted64
    PRINT 10

    ; Requests the device must refuse: a read past the end (IOERR), an unknown type (UNSUPP).
    mov eax, T_IN
    mov edx, [rbx + R_CONFIG]       ; capacity: the first sector that does not exist
    mov ecx, 2
    call blk_req
    mov eax, 99
    xor edx, edx
    xor ecx, ecx
    call blk_req

    ; Garbage: notify a queue that does not exist. The device must say NEEDS_RESET (0x40),
    ; raise a config-change interrupt, and come back after a reset.
    mov dword [rbx + R_NOTIFY], 7
    PRINT "bad notify status="
    HEX dword [rbx + R_STATUS], 2
    PRINT " isr="
    HEX dword [rbx + R_ISR], 1
    mov dword [rbx + R_ACK], 3
    mov dword [rbx + R_STATUS], 0
    PRINT " after reset status="
    HEX dword [rbx + R_STATUS], 2
    PRINT 10
    DONE

fail:
    PRINT "virtio-blk guest failed", 10
    mov al, 0x11
    out PORT_DEBUG_EXIT, al
    HALT

; blk_req: one request on queue 0. EAX = type, RDX = sector, ECX = data direction (0 none,
; 1 device reads DATA, 2 device writes DATA), R8D = data length (512 unless given: callers with
; ECX=2 and GET_ID set it). Prints "req type=.. status=.. len=.. isr=..".
blk_req:
    cmp eax, T_GET_ID
    je .len_given
    mov r8d, 512
.len_given:
    mov [HDR], eax
    mov dword [HDR + 4], 0
    mov [HDR + 8], rdx
    mov byte [STAT], 0xFF
    mov qword [DESC], HDR           ; descriptor 0: the header, device-readable
    mov dword [DESC + 8], 16
    mov word [DESC + 12], 1         ; NEXT
    mov word [DESC + 14], 1
    mov edi, 16                     ; offset of the status descriptor
    test ecx, ecx
    jz .status
    mov qword [DESC + 16], DATA     ; descriptor 1: the data
    mov [DESC + 24], r8d
    mov word [DESC + 28], 1         ; NEXT, and WRITE when the device fills it
    cmp ecx, 2
    jne .readable
    mov word [DESC + 28], 3
.readable:
    mov word [DESC + 30], 2
    mov edi, 32
.status:
    mov qword [DESC + rdi], STAT    ; last descriptor: the status byte, device-writable
    mov dword [DESC + rdi + 8], 1
    mov word [DESC + rdi + 12], 2
    mov word [DESC + rdi + 14], 0
    mov [req_type], eax
    mov rsi, [avail]                ; avail ring: head 0 in the next slot, then idx + 1
    movzx eax, word [rsi + 2]
    mov edx, eax
    and edx, QSIZE - 1
    mov word [rsi + 4 + rdx * 2], 0
    inc eax
    mov [rsi + 2], ax
    mov [expect], ax
    mov dword [rbx + R_NOTIFY], 0
    mov rsi, [used]
    mov ecx, 1000000
.wait:
    mov ax, [rsi + 2]
    cmp ax, [expect]
    je .done
    pause
    dec ecx
    jnz .wait
    PRINT "request timed out", 10
    jmp fail
.done:
    movzx edx, ax
    dec edx
    and edx, QSIZE - 1
    mov ecx, [rsi + 4 + rdx * 8 + 4]   ; used element: bytes written
    mov eax, [rbx + R_ISR]
    mov [rbx + R_ACK], eax
    PRINT "req type="
    HEX dword [req_type], 2
    PRINT " status="
    HEXB [STAT], 2
    PRINT " len="
    HEX ecx, 4
    PRINT " isr="
    HEX eax, 1
    PRINT " isr_after_ack="
    HEX dword [rbx + R_ISR], 1
    PRINT 10
    ret

written: db "written by the virtio-blk guest", 10, 0

    align 8
avail:    dq 0
used:     dq 0
req_type: dd 0
expect:   dw 0

    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA
file_end:
