; blk_pci - the project's virtio-blk test guest over virtio-pci: a vmlinux-shaped ELF booted with
; --kernel, entered in long mode with the first GiB identity-mapped. It enumerates PCI bus 0
; through configuration mechanism #1 (0xCF8/0xCFC), finds the first virtio device (vendor 1AF4),
; sizes BAR0, reads the BARs emu assigned, turns decode off and on, and then drives the disk
; through the legacy I/O BAR when the command line starts with "legacy", else through the modern
; capabilities (common/notify/ISR/device configuration in the memory BAR). Then the same requests
; as blk.asm: read sector 1, write sector 2, flush, get-id, two refused requests, one protocol
; violation (notify of a queue that does not exist: NEEDS_RESET), and a reset. Each step is one
; line on COM1; tests/test_pci_virtio.py checks them and the image file.
%include "lib.inc"
%include "kreport.inc"
%include "elf.inc"
%include "virtq.inc"

%define AVAIL_M     0x402000        ; modern: each ring where we like
%define USED_M      0x403000

%define CFG_ADDR    0xCF8
%define CFG_DATA    0xCFC

; legacy I/O BAR registers
%define L_HFEAT     0x00
%define L_GFEAT     0x04
%define L_PFN       0x08
%define L_QNUM      0x0C
%define L_QSEL      0x0E
%define L_NOTIFY    0x10
%define L_STATUS    0x12
%define L_ISR       0x13
%define L_CONFIG    0x14
; modern common configuration
%define C_DFSEL     0x00
%define C_DF        0x04
%define C_GFSEL     0x08
%define C_GF        0x0C
%define C_NUMQ      0x12
%define C_STATUS    0x14
%define C_QSEL      0x16
%define C_QSIZE     0x18
%define C_QMSIX     0x1A
%define C_QENABLE   0x1C
%define C_QNOFF     0x1E
%define C_QDESC     0x20
%define C_QDRIVER   0x28
%define C_QDEVICE   0x30

    VIRTIO_GUEST "virtio-blk pci guest"
    cmp byte [rsi], 'l'
    sete byte [legacy]
    call kquoted64
    PRINT 10

    MAP_HIGH_GIB

    ; Enumerate bus 0: every present function 0, and the first virtio device.
    mov dword [vdev], -1
    xor ebp, ebp
.scan:
    mov [cur], ebp
    xor esi, esi
    call cfg_read
    cmp eax, -1
    je .next
    mov r12d, eax
    PRINT "pci 00:"
    HEX ebp, 2
    PRINT ".0 id="
    HEX r12d, 8
    mov esi, 8
    call cfg_read
    shr eax, 8
    PRINT " class="
    HEX eax, 6
    PRINT 10
    cmp r12w, 0x1AF4
    jne .next
    cmp dword [vdev], -1
    jne .next
    mov [vdev], ebp
.next:
    inc ebp
    cmp ebp, 32
    jb .scan
    PRINT "pci 00:1f.0 id="             ; an empty slot reads all-ones
    mov dword [cur], 31
    xor esi, esi
    call cfg_read
    HEX eax, 8
    PRINT 10
    mov eax, [vdev]
    cmp eax, -1
    je fail
    mov [cur], eax

    PRINT "virtio subsys="
    mov esi, 0x2C
    call cfg_read
    HEX eax, 8
    PRINT " rev="
    mov esi, 8
    call cfg_read
    movzx eax, al
    HEX eax, 2
    PRINT " line/pin="
    mov esi, 0x3C
    call cfg_read
    movzx eax, ax
    HEX eax, 4
    PRINT 10

    ; BAR0: size it (all-ones, read the mask, restore), then the 64-bit BAR 4.
    mov esi, 0x10
    call cfg_read
    mov r12d, eax
    mov eax, -1
    call cfg_write
    call cfg_read
    mov r13d, eax
    mov eax, r12d
    call cfg_write
    PRINT "bar0 mask="
    HEX r13d, 8
    PRINT " io="
    mov eax, r12d
    and eax, 0xFFFC
    mov [iobase], eax
    test r12d, 1
    jnz .io_ok
    mov dword [iobase], 0
.io_ok:
    HEX dword [iobase], 4
    mov esi, 0x20
    call cfg_read
    mov r12d, eax
    mov esi, 0x24
    call cfg_read
    PRINT " bar4="
    HEX eax, 8
    HEX r12d, 8
    and r12d, 0xFFFFFFF0
    mov [mbar], r12
    PRINT 10

    cmp byte [legacy], 0
    je modern_setup

; -- legacy: the I/O BAR ------------------------------------------------------------------------
legacy_setup:
    mov eax, [iobase]
    test eax, eax
    jz fail
    mov esi, 4                      ; decode off: the ports float (all-ones), then back on
    mov eax, 0
    call cfg_write16
    mov edx, [iobase]
    add edx, L_QNUM
    in ax, dx
    movzx r12d, ax
    mov esi, 4
    mov eax, 7
    call cfg_write16
    in ax, dx
    movzx r13d, ax
    PRINT "decode off="
    HEX r12d, 4
    PRINT " on="
    HEX r13d, 4
    PRINT 10
    xor eax, eax                    ; reset, ACKNOWLEDGE, DRIVER
    call set_status
    mov eax, 1
    call set_status
    mov eax, 3
    call set_status
    mov edx, [iobase]
    in eax, dx                      ; host features (32 bits)
    mov r13d, eax
    PRINT "features="
    HEX r13d, 8
    PRINT 10
    and r13d, 1 << 9                ; FLUSH
    mov edx, [iobase]
    add edx, L_GFEAT
    mov eax, r13d
    out dx, eax
    call zero_ring
    mov edx, [iobase]
    add edx, L_QSEL
    xor eax, eax
    out dx, ax
    mov edx, [iobase]
    add edx, L_QNUM
    in ax, dx
    movzx eax, ax
    mov [qsize], eax                ; a legacy driver takes the device's size
    PRINT "queue0 max="
    HEX eax, 4
    mov edx, [iobase]
    add edx, L_PFN
    mov eax, RING >> 12
    out dx, eax
    mov eax, [qsize]
    shl eax, 4
    add eax, RING
    mov [avail], rax
    mov ecx, [qsize]
    lea eax, [rax + rcx * 2 + 6 + 4095]
    and eax, ~4095
    mov [used], rax
    PRINT " pfn="
    in eax, dx
    HEX eax, 8
    PRINT 10
    jmp driver_ok

; -- modern: the capabilities -------------------------------------------------------------------
modern_setup:
    mov esi, 0x34
    call cfg_read
    movzx ebp, al                   ; capability pointer
.cap:
    test ebp, ebp
    jz .caps_done
    mov esi, ebp
    call cfg_read
    mov r12d, eax                   ; id, next, len, cfg_type
    cmp al, 9
    jne .cap_next
    lea esi, [rbp + 4]
    call cfg_read
    cmp al, 4                       ; every region is in BAR 4
    jne fail
    lea esi, [rbp + 8]
    call cfg_read
    add rax, [mbar]
    mov ecx, r12d
    shr ecx, 24
    cmp ecx, 1
    jne .not_common
    mov [ccfg], rax
.not_common:
    cmp ecx, 2
    jne .not_notify
    mov [notify], rax
    lea esi, [rbp + 16]
    push rax
    call cfg_read
    mov [mult], eax
    pop rax
.not_notify:
    cmp ecx, 3
    jne .not_isr
    mov [isr], rax
.not_isr:
    cmp ecx, 4
    jne .cap_next
    mov [devcfg], rax
.cap_next:
    mov ebp, r12d
    shr ebp, 8
    and ebp, 0xFF
    jmp .cap
.caps_done:
    mov rbx, [ccfg]
    test rbx, rbx
    jz fail
    PRINT "caps common="
    mov rax, [ccfg]
    sub rax, [mbar]
    HEX eax, 4
    PRINT " notify="
    mov rax, [notify]
    sub rax, [mbar]
    HEX eax, 4
    PRINT " mult="
    HEX dword [mult], 1
    PRINT " isr="
    mov rax, [isr]
    sub rax, [mbar]
    HEX eax, 4
    PRINT " device="
    mov rax, [devcfg]
    sub rax, [mbar]
    HEX eax, 4
    PRINT 10
    mov esi, 4                      ; decode off: the BAR floats, then back on
    xor eax, eax
    call cfg_write16
    movzx r12d, word [rbx + C_NUMQ]
    mov esi, 4
    mov eax, 7
    call cfg_write16
    movzx r13d, word [rbx + C_NUMQ]
    PRINT "decode off="
    HEX r12d, 4
    PRINT " on="
    HEX r13d, 4
    PRINT 10
    xor eax, eax
    call set_status
    mov eax, 1
    call set_status
    mov eax, 3
    call set_status
    mov dword [rbx + C_DFSEL], 0
    mov r13d, [rbx + C_DF]
    mov dword [rbx + C_DFSEL], 1
    mov r14d, [rbx + C_DF]
    PRINT "features="
    HEX r14d, 8
    HEX r13d, 8
    PRINT 10
    and r13d, 1 << 9
    mov dword [rbx + C_GFSEL], 0
    mov [rbx + C_GF], r13d
    mov dword [rbx + C_GFSEL], 1
    mov dword [rbx + C_GF], 1       ; VERSION_1
    mov eax, 0xB
    call set_status
    call get_status
    PRINT "features_ok status="
    HEX eax, 2
    PRINT 10
    test eax, 8
    jz fail
    call zero_ring
    mov word [rbx + C_QSEL], 0
    PRINT "queue0 max="
    HEXW [rbx + C_QSIZE], 4
    mov dword [qsize], 8
    mov word [rbx + C_QSIZE], 8
    mov dword [rbx + C_QDESC], DESC
    mov dword [rbx + C_QDESC + 4], 0
    mov dword [rbx + C_QDRIVER], AVAIL_M
    mov dword [rbx + C_QDRIVER + 4], 0
    mov dword [rbx + C_QDEVICE], USED_M
    mov dword [rbx + C_QDEVICE + 4], 0
    movzx eax, word [rbx + C_QNOFF]
    imul eax, [mult]
    add [notify], rax
    PRINT " msix="
    HEXW [rbx + C_QMSIX], 4
    mov word [rbx + C_QENABLE], 1
    PRINT " enable="
    HEXW [rbx + C_QENABLE], 1
    PRINT 10
    mov qword [avail], AVAIL_M
    mov qword [used], USED_M

driver_ok:
    call get_status
    or eax, 4                       ; DRIVER_OK
    call set_status
    PRINT "status="
    call get_status
    HEX eax, 2
    PRINT " capacity="
    mov esi, 4
    call config_read32
    HEX eax, 8
    xor esi, esi
    call config_read32
    HEX eax, 8
    PRINT 10

    call blk_requests
    xor esi, esi                    ; capacity: the first sector that does not exist
    call config_read32
    mov edx, eax
    call blk_refused

    mov eax, 7                      ; garbage: notify queue 7, which does not exist
    call do_notify
    PRINT "bad notify status="
    call get_status
    HEX eax, 2
    PRINT " isr="
    call read_isr
    HEX eax, 1
    xor eax, eax
    call set_status
    PRINT " after reset status="
    call get_status
    HEX eax, 2
    PRINT 10
    DONE

; -- PCI configuration space of device [cur], register ESI ---------------------------------------
cfg_addr:                           ; out dx = data port for byte ESI & 3
    push rax
    mov eax, [cur]
    shl eax, 11
    or eax, 0x80000000
    mov edx, esi
    and edx, 0xFC
    or eax, edx
    mov dx, CFG_ADDR
    out dx, eax
    mov edx, esi
    and edx, 3
    add edx, CFG_DATA
    pop rax
    ret
cfg_read:                           ; eax = dword at ESI
    push rdx
    call cfg_addr
    in eax, dx
    pop rdx
    ret
cfg_write:                          ; dword EAX to ESI
    push rdx
    call cfg_addr
    out dx, eax
    pop rdx
    ret
cfg_write16:                        ; word AX to ESI (a word access at 0xCFC-0xCFF)
    push rdx
    call cfg_addr
    out dx, ax
    pop rdx
    ret

; -- transport-specific accessors ---------------------------------------------------------------
get_status:                         ; eax = device status
    cmp byte [legacy], 0
    je .m
    push rdx
    mov edx, [iobase]
    add edx, L_STATUS
    in al, dx
    pop rdx
    movzx eax, al
    ret
.m:
    mov rax, [ccfg]
    movzx eax, byte [rax + C_STATUS]
    ret
set_status:                         ; device status = AL
    cmp byte [legacy], 0
    je .m
    push rdx
    mov edx, [iobase]
    add edx, L_STATUS
    out dx, al
    pop rdx
    ret
.m:
    push rdx
    mov rdx, [ccfg]
    mov [rdx + C_STATUS], al
    pop rdx
    ret
read_isr:                           ; eax = ISR (reading acknowledges it)
    cmp byte [legacy], 0
    je .m
    push rdx
    mov edx, [iobase]
    add edx, L_ISR
    in al, dx
    pop rdx
    movzx eax, al
    ret
.m:
    mov rax, [isr]
    movzx eax, byte [rax]
    ret
do_notify:                          ; notify queue AX
    cmp byte [legacy], 0
    je .m
    push rdx
    mov edx, [iobase]
    add edx, L_NOTIFY
    out dx, ax
    pop rdx
    ret
.m:
    push rdx
    push rcx
    mov rdx, [notify]               ; queue 0's address; queue n is n * multiplier further
    movzx ecx, ax
    imul ecx, [mult]
    mov [rdx + rcx], ax
    pop rcx
    pop rdx
    ret
config_read32:                      ; eax = device config dword at ESI
    cmp byte [legacy], 0
    je .m
    push rdx
    mov edx, [iobase]
    add edx, L_CONFIG
    add edx, esi
    in eax, dx
    pop rdx
    ret
.m:
    mov rax, [devcfg]
    mov eax, [rax + rsi]
    ret

; blk_req: one request on queue 0 (virtq.inc has the arguments), notified through the transport.
; Prints "req type=.. status=.. len=.. intx=.. isr=.. isr_after=..".
blk_req:
    call blk_submit
    xor eax, eax
    call do_notify
    call blk_wait
    mov [req_len], ecx
    push rsi
    mov esi, 4                      ; PCI status bit 3: the INTx the device drives
    call cfg_read
    pop rsi
    shr eax, 16 + 3
    and eax, 1
    mov [req_intx], eax
    call read_isr
    mov [req_isr], eax
    PRINT "req type="
    HEX dword [req_type], 2
    PRINT " status="
    HEXB [STAT], 2
    PRINT " len="
    HEX dword [req_len], 4
    PRINT " intx="
    HEX dword [req_intx], 1
    PRINT " isr="
    HEX dword [req_isr], 1
    PRINT " isr_after="
    call read_isr
    HEX eax, 1
    PRINT 10
    ret

    align 8
mbar:     dq 0
ccfg:     dq 0
notify:   dq 0
isr:      dq 0
devcfg:   dq 0
mult:     dd 0
iobase:   dd 0
vdev:     dd 0
cur:      dd 0
req_len:  dd 0
req_intx: dd 0
req_isr:  dd 0
legacy:   db 0

    VIRTQ_ROUTINES
    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA
file_end:
