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
%include "virtq.inc"
%include "mmio.inc"

    VIRTIO_GUEST "virtio-blk guest"
    call kquoted64
    PRINT 10

    MAP_HIGH_GIB

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
    call zero_ring
    mov dword [rbx + R_QSEL], 0
    PRINT "queue0 max="
    HEX dword [rbx + R_QNUMMAX], 4
    mov dword [rbx + R_QNUM], QSIZE
    mov dword [qsize], QSIZE
    cmp r12d, 2
    jne .legacy_queue
    QUEUE_V2
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

    call blk_requests
    mov edx, [rbx + R_CONFIG]       ; capacity: the first sector that does not exist
    call blk_refused

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

; blk_req: one request on queue 0 (virtq.inc has the arguments), notified through the MMIO
; register. Prints "req type=.. status=.. len=.. isr=.. isr_after_ack=..".
blk_req:
    call blk_submit
    mov dword [rbx + R_NOTIFY], 0
    call blk_wait
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

    VIRTQ_ROUTINES
    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA
file_end:
