; debug_exit: print, then write 0x21 to the debug-exit port (QEMU isa-debug-exit semantics):
; the machine must stop with exit status (0x21 << 1) | 1 = 0x43.
%include "lib.inc"
    SNIPPET_START
    PRINT "debug_exit: writing 0x21 to port 0xf4", 10
    mov al, 0x21
    out PORT_DEBUG_EXIT, al
    ; Only reached if the write did not end the run; the test then sees status 0, not 0x43.
    PRINT "debug_exit: still running after the write", 10
    HALT

    LIB_ROUTINES
