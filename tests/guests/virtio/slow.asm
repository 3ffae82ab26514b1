; slow - a virtio-blk guest that keeps counting while its read is in flight (tests/
; test_virtio_kvm.py). It sets up the virtio-mmio device in slot 0 (version 2), submits one read
; of sector 1, notifies, and then counts loop iterations until the used ring shows the answer,
; touching no device register meanwhile. Under KVM the notify is an ioeventfd and the host's
; (deliberately slow) read runs on the device thread, so the count grows while the host waits;
; on the synchronous path the notify would return only after the read and the count stays tiny.
; (With REQUESTS defined it sends that many reads, one after the other.)
%include "lib.inc"
%include "kreport.inc"
%include "elf.inc"
%include "virtq.inc"
%include "mmio.inc"

%ifndef REQUESTS
%define REQUESTS    1               ; benchmarks/virtio_blk_kvm.py sends more, one at a time
%endif

    VIRTIO_GUEST "virtio-blk slow guest"
    PRINT 10
    MAP_HIGH_GIB

    mov ebx, MMIO
    mov dword [rbx + R_STATUS], 0
    mov dword [rbx + R_STATUS], 3   ; ACKNOWLEDGE | DRIVER
    mov dword [rbx + R_GFEATSEL], 0
    mov dword [rbx + R_GFEAT], 0
    mov dword [rbx + R_GFEATSEL], 1
    mov dword [rbx + R_GFEAT], 1    ; VIRTIO_F_VERSION_1
    mov dword [rbx + R_STATUS], 0xB ; + FEATURES_OK
    call zero_ring
    mov dword [rbx + R_QSEL], 0
    mov dword [rbx + R_QNUM], QSIZE
    mov dword [qsize], QSIZE
    QUEUE_V2
    mov dword [rbx + R_STATUS], 0xF ; + DRIVER_OK

    xor r15, r15
    mov r13d, REQUESTS
.request:
    mov eax, T_IN
    mov edx, 1
    mov ecx, 2
    call blk_submit
    mov dword [rbx + R_NOTIFY], 0
    mov rsi, [used]
.count:                             ; no exits in here: memory reads only
    inc r15
    mov ax, [rsi + 2]
    cmp ax, [expect]
    jne .count
    dec r13d
    jnz .request
    mov r14d, [rbx + R_ISR]
    mov [rbx + R_ACK], r14d
    PRINT "count="
    mov rax, r15
    shr rax, 32
    HEX eax, 8
    HEX r15d, 8
    PRINT " status="
    HEXB [STAT], 2
    PRINT " isr="
    HEX r14d, 1
    PRINT " data="
    HEX dword [DATA], 8
    PRINT 10
    mov dword [rbx + R_STATUS], 0
    DONE

blk_req:                            ; (VIRTQ_ROUTINES wants one; this guest sends a single request)
    call blk_submit
    mov dword [rbx + R_NOTIFY], 0
    call blk_wait
    ret

    VIRTQ_ROUTINES
    LIB_ROUTINES
    KLIB_ROUTINES
    KDATA
file_end:
